"""``ovcamo-demo``: the page served on 127.0.0.1 and driven through ``gradio_client`` on a tiny
randomly initialised micro BaCLIP (as ``ovcamo-train`` saves one), its messages for bad input, its
command line, and a headless-browser screenshot of the page."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from _engine_data import write_tiny_checkpoint  # noqa: E402
from PIL import Image  # noqa: E402

from ovcamo import cli  # noqa: E402
from ovcamo.demo import build_app, checkpoint_classes, load_demo_model  # noqa: E402
from ovcamo.models.predictor import as_rgb_array  # noqa: E402
from ovcamo.report.overlay import overlay_prediction  # noqa: E402

CLASSES = ["owl", "frog"]
#: The page and the reference run the same model in one process; a uint8 level may still differ
#: by one where a logit rounds differently.
LEVEL_TOLERANCE = 1
CHROMIUM = Path("/usr/bin/chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ``ovcamo-train`` run folder (``train.select=final``): ``checkpoints/last`` and a
    ``run_info.json``."""
    run = tmp_path_factory.mktemp("run")
    write_tiny_checkpoint(run / "checkpoints" / "last")
    info = {"base_classes": ["owl", "frog"], "sources": [{"novel_classes": ["crab"]}]}
    (run / "run_info.json").write_text(json.dumps(info), encoding="utf-8")
    return run


@pytest.fixture(scope="module")
def served(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    """The page for the tiny model, served on a free port: ``(url, model)``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
        model = load_demo_model(run_dir, "cpu")
        app = build_app(model, CLASSES)
        port = _free_port()
        app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        try:
            yield f"http://127.0.0.1:{port}/", model
        finally:
            app.close()


@pytest.fixture(scope="module")
def client(served: tuple[str, object]) -> gradio_client.Client:
    return gradio_client.Client(served[0], verbose=False)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small non-square RGB image (not the model's input size, so the mask is resized back)."""
    path = tmp_path_factory.mktemp("images") / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(path)
    return path


def _segment(client: gradio_client.Client, image: Path | None, classes: str) -> tuple:
    upload = gradio_client.handle_file(str(image)) if image is not None else None
    return client.predict(upload, classes, api_name="/segment")


def test_page_segments_as_the_package_predicts(client, served, image: Path) -> None:
    mask_file, overlay_file, probs, message = _segment(client, image, "owl, frog")
    expected = served[1].predict(str(image), CLASSES)

    mask = np.asarray(Image.open(mask_file))
    assert mask.shape == expected.mask.shape == (40, 56)
    assert np.abs(mask.astype(int) - expected.mask.astype(int)).max() <= LEVEL_TOLERANCE
    assert probs["label"] == expected.class_name in CLASSES
    shown = {c["label"]: c["confidence"] for c in probs["confidences"]}
    assert shown == pytest.approx(expected.class_probs, abs=1e-6)
    assert f"**{expected.class_name}** ({expected.score:.2f})" in message

    label = f"{expected.class_name} {expected.score:.2f}"
    drawn = overlay_prediction(as_rgb_array(image), np.asarray(Image.open(mask_file)), label)
    overlay = np.asarray(Image.open(overlay_file).convert("RGB"))
    assert np.array_equal(overlay, drawn)


@pytest.mark.parametrize(
    ("classes", "use_image", "says"),
    [
        ("owl, frog", False, "upload an image first"),
        (" , ", True, "type at least one class name"),
        ("owl, ../frog", True, "'../frog' contains a path separator"),
        ("owl, owl", True, "class names listed twice: owl"),
    ],
)
def test_bad_input_gives_a_message(client, image: Path, classes, use_image, says) -> None:
    mask, overlay, _, message = _segment(client, image if use_image else None, classes)
    assert mask is None and overlay is None
    assert message.startswith("**Cannot segment:**") and says in message


def test_unreadable_image_gives_a_message(client, tmp_path: Path) -> None:
    fake = tmp_path / "holiday.png"
    fake.write_text("not an image", encoding="utf-8")
    mask, _, _, message = _segment(client, fake, "owl")
    assert mask is None
    assert "cannot read holiday.png as an image" in message


def test_page_prefills_the_classes(served) -> None:
    with urllib.request.urlopen(served[0] + "config", timeout=30) as response:
        config = json.load(response)
    values = [c.get("props", {}).get("value") for c in config["components"]]
    assert "owl, frog" in values


def test_checkpoint_classes_come_from_the_run_record(run_dir: Path, tmp_path: Path) -> None:
    assert checkpoint_classes(run_dir) == ["owl", "frog", "crab"]
    assert checkpoint_classes(run_dir / "checkpoints" / "last") == ["owl", "frog", "crab"]
    assert checkpoint_classes(tmp_path) is None


def test_check_builds_the_app_with_the_run_classes_and_writes_nothing(
    run_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    cli.demo([f"checkpoint={run_dir}", "check=true", "device=cpu"])
    out = capsys.readouterr().out
    assert "ready to serve" in out and "3 classes (owl, frog, crab)" in out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([], "give checkpoint="),
        (["checkpoint=NOWHERE"], "no model at"),
        (["checkpoint=RUN", "classes=[owl,a/b]"], "'a/b' contains a path separator"),
    ],
)
def test_bad_settings_exit_2_with_one_paragraph(
    run_dir: Path, tmp_path: Path, monkeypatch, capsys, args, says
) -> None:
    monkeypatch.chdir(tmp_path)
    args = [a.replace("NOWHERE", str(tmp_path / "x")).replace("RUN", str(run_dir)) for a in args]
    with pytest.raises(SystemExit) as exc:
        cli.demo([*args, "check=true"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("ovcamo-demo: ") and says in err and "Traceback" not in err


def test_a_port_in_use_exits_2(run_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SystemExit) as exc:
            cli.demo([f"checkpoint={run_dir}", f"port={port}", "device=cpu"])
    assert exc.value.code == 2
    assert f"port={port}" in capsys.readouterr().err


def test_missing_gradio_names_the_extra(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "gradio", None)
    monkeypatch.delitem(sys.modules, "ovcamo.demo", raising=False)
    with pytest.raises(SystemExit) as exc:
        cli.demo(["checkpoint=anything"])
    assert exc.value.code == 2
    assert 'pip install "ovcamo[demo]"' in capsys.readouterr().err


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium to take a screenshot")
def test_page_renders_in_a_headless_browser(served, tmp_path: Path) -> None:
    shot = tmp_path / "page.png"
    profile = tmp_path / "profile"
    subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            # The page is drawn by JavaScript after loading: give it time before the shot.
            "--virtual-time-budget=15000",
            f"--screenshot={shot}",
            "--window-size=1280,900",
            served[0],
        ],
        capture_output=True,
        timeout=180,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    shutil.rmtree(profile, ignore_errors=True)
    assert shot.is_file()
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (900, 1280)
    assert pixels.var() > 50.0
