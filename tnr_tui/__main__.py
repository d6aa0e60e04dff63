from tnr_tui.cli import main

raise SystemExit(main())
