"""The lab's screens: Lab (panels and preview), History (the run store), Compare (a grid of runs)."""
