"""The toy checker, validated on freshly rendered ground truth and on images that must fail."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.toy import COLOURS, SHAPES, all_scenes, check, parse_prompt, render
from engine.toy.data import Scene, make_dataset


def test_grammar_has_every_colour_shape_background_triple_once() -> None:
    scenes = all_scenes()
    assert len(scenes) == 8 * 3 * 7
    assert len({s.prompt for s in scenes}) == len(scenes)
    assert all(s.colour != s.background for s in scenes)
    assert parse_prompt("a red circle on a blue background") == Scene("red", "circle", "blue")
    assert parse_prompt("  A Red Circle on an orange background ") == Scene("red", "circle", "orange")


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("a cat", "is not of the form"),
        ("a pink circle on a blue background", "unknown word 'pink'"),
        ("a red star on a blue background", "unknown word 'star'"),
        ("a red circle on a red background", "same colour"),
    ],
)
def test_bad_prompts_are_refused_with_a_reason(prompt: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_prompt(prompt)


def test_checker_is_right_on_at_least_99_percent_of_fresh_ground_truth_per_attribute() -> None:
    rng = np.random.default_rng(2024)
    scenes = all_scenes()
    right = {"shape_colour": 0, "background": 0, "shape": 0}
    count = 400
    for _ in range(count):
        scene = scenes[int(rng.integers(len(scenes)))]
        verdict = check(render(scene, rng), scene.prompt)
        for name in right:
            right[name] += getattr(verdict, name)
    for name, hits in right.items():
        assert hits / count >= 0.99, (name, hits)


def test_each_shape_kind_is_recognised_at_its_smallest_and_largest_and_rotated() -> None:
    images, scenes = make_dataset(3 * 168, seed=7)
    for image, scene in zip(images, scenes, strict=True):
        verdict = check(image, scene.prompt)
        assert verdict.seen_shape == scene.shape, (scene, verdict)


def test_a_wrongly_coloured_shape_fails_only_the_colour() -> None:
    rng = np.random.default_rng(1)
    image = render(Scene("red", "square", "blue"), rng)
    verdict = check(image, "a green square on a blue background")
    assert not verdict.shape_colour and verdict.background and verdict.shape and not verdict.all
    assert verdict.seen_colour == "red"


def test_a_wrong_background_or_shape_fails_that_attribute() -> None:
    rng = np.random.default_rng(2)
    image = render(Scene("yellow", "triangle", "black"), rng)
    assert check(image, "a yellow triangle on a black background").all
    wrong_background = check(image, "a yellow triangle on a purple background")
    assert not wrong_background.background and wrong_background.shape_colour
    wrong_shape = check(image, "a yellow circle on a black background")
    assert not wrong_shape.shape and wrong_shape.seen_shape == "triangle"


def test_an_image_without_a_shape_fails_colour_and_shape() -> None:
    plain = np.full((64, 64, 3), COLOURS["blue"], dtype=np.uint8)
    noise = np.random.default_rng(3).normal(0, 3, plain.shape)
    plain = np.clip(plain + noise, 0, 255).astype(np.uint8)
    verdict = check(Image.fromarray(plain), "a red circle on a blue background")
    assert verdict.background
    assert not verdict.shape_colour and not verdict.shape and not verdict.all
    assert verdict.seen_shape is None and verdict.seen_colour is None


def test_noise_alone_is_not_a_shape_of_the_asked_kind() -> None:
    rng = np.random.default_rng(4)
    noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert not check(noise, "a red circle on a blue background").all


def test_the_checker_accepts_pil_images_and_bigger_sizes() -> None:
    rng = np.random.default_rng(5)
    for shape in SHAPES:
        image = Image.fromarray(render(Scene("purple", shape, "white"), rng, size=128))
        assert check(image, f"a purple {shape} on a white background").all


def test_a_grey_image_array_of_the_wrong_rank_gets_a_clear_error() -> None:
    with pytest.raises(ValueError, match="expected an RGB image"):
        check(np.zeros((64, 64)), "a red circle on a blue background")
