"""The compact style network (issue 35): what the pipeline needs of it, its distillation through the
training loop, and choosing between a style's two networks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.utils.flop_counter import FlopCounterMode

from conftest import decode, run_cli
from test_trainer import inputs, logged_losses  # noqa: F401 (a fixture: photos, a painting and a VGG)
from vidstyle.errors import VidstyleError
from vidstyle.export import FramesInFramesOut, export_style
from vidstyle.inference import Controls, Stylizer, resolve_device
from vidstyle.model import CompactTransformerNet, TransformerNet
from vidstyle.pipeline import stylize_file
from vidstyle.sample import make_sample_video
from vidstyle.styles import FLICKER_FIGURE, QUALITY_FIGURE, find_style, find_treatment, save_style
from vidstyle.trainer.cli import distill, train
from vidstyle.trainer.config import Recipe
from vidstyle.trainer.data import sha256_file


def test_compact_network_keeps_what_the_pipeline_relies_on() -> None:
    torch.manual_seed(0)
    net = CompactTransformerNet().eval()
    for attribute in ("factor", "size_multiple", "feature_stride"):
        assert getattr(net, attribute) == getattr(TransformerNet, attribute)
    x = torch.rand(2, 3, 36, 52) * 255
    with torch.no_grad():
        features = net.encode(x)
        assert features.shape == (2, 64, 36 // net.feature_stride, 52 // net.feature_stride)
        out = net.render(features)
        assert out.shape == x.shape and torch.equal(out, net(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            reduced = net(x).float()
    assert (reduced - out).abs().mean() < 1 and out.std() > 1
    # The docstring's figure is the architecture's: it moves only when the layers do.
    with FlopCounterMode(display=False) as counter:
        net(torch.rand(1, 3, 64, 64))
    assert f"{counter.get_total_flops() / 64 / 64 / 1000:.1f} kFLOP" in CompactTransformerNet.__doc__


def test_a_deepened_compact_network_starts_where_it_was() -> None:
    torch.manual_seed(0)
    net = CompactTransformerNet().eval()
    deeper = net.deepened(8, detail_blocks=2).eval()
    assert (len(deeper.residuals), len(deeper.detail)) == (8, 2)
    x = torch.rand(1, 3, 32, 48) * 255
    with torch.no_grad():
        assert torch.allclose(deeper(x), net(x), atol=1e-3)
        # Once trained, a detail block changes the strokes (it is in the path).
        deeper.detail[0].body[-1].bias.data.fill_(1)
        assert not torch.allclose(deeper(x), net(x), atol=1e-3)
    # Its weights load back into a network of its own depths, and an older network's keys are unchanged.
    loaded = CompactTransformerNet.for_state(deeper.state_dict())
    assert (len(loaded.residuals), len(loaded.detail)) == (8, 2)
    assert set(net.state_dict()) < set(deeper.state_dict())
    with pytest.raises(ValueError, match="cannot deepen 8 residual blocks to 5"):
        deeper.deepened(5, detail_blocks=2)
    with pytest.raises(ValueError, match="cannot deepen 2 detail blocks to 1"):
        deeper.deepened(8, detail_blocks=1)


def test_dense_blocks_start_as_the_separable_ones_they_replace() -> None:
    torch.manual_seed(0)
    net = CompactTransformerNet(detail_blocks=1).eval()
    for norm in (m for m in net.modules() if isinstance(m, torch.nn.InstanceNorm2d)):  # not the identity's scale
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.normal_()
    dense = net.deepened(6, detail_blocks=1, dense=True).eval()
    assert dense.dense and not net.dense and not any(block.separable for block in dense.residuals)
    assert dense.detail[0].separable  # at half the size they stay separable
    x = torch.rand(1, 3, 32, 48) * 255
    with torch.no_grad():
        assert torch.allclose(dense(x), net(x), atol=1e-2)
    blocks = [sum(p.numel() for p in n.residuals[0].parameters()) for n in (net, dense)]
    assert blocks[1] > 6 * blocks[0]  # the capacity it adds
    loaded = CompactTransformerNet.for_state(dense.state_dict())
    assert loaded.dense and len(loaded.residuals) == 6
    loaded.load_state_dict(dense.state_dict())
    assert dense.deepened(7, detail_blocks=1).dense  # once dense, it stays so


def test_compact_network_exports_like_a_full_one(tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    net = CompactTransformerNet().eval()
    export_style(net, tmp_path / "compact.onnx")
    frame = (torch.rand(1, 3, 45, 71) * 255).numpy()  # an odd size: padded and cropped inside the graph
    exported = onnxruntime.InferenceSession(str(tmp_path / "compact.onnx")).run(None, {"image": frame})[0]
    with torch.no_grad():
        expected = FramesInFramesOut(net)(torch.from_numpy(frame)).numpy()
    assert exported.shape == frame.shape and np.abs(exported - expected).max() < 0.5


def distill_args(inputs: dict[str, Path], teacher: Path, run_dir: Path, curriculum: str | None, *extra: str) -> list[str]:
    """Without a curriculum, distill's own recipe."""
    schedule = ["--curriculum", curriculum] if curriculum else []
    return [str(teacher), "--style-image", str(inputs["style"]), "--dataset", str(inputs["photos"]),
            "--vgg-weights", str(inputs["vgg"]), "--run-dir", str(run_dir), *schedule,
            "--holdout", "2", "--log-every", "1", "--sample-every", "3", "--checkpoint-every", "100",
            "--workers", "1", "--threads", "1", *extra]


@pytest.fixture(scope="module")
def teacher(inputs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """A full style trained for two iterations: what a distillation starts from."""
    run_dir = tmp_path_factory.mktemp("teacher")
    result = CliRunner().invoke(train, [
        str(inputs["style"]), "--dataset", str(inputs["photos"]), "--vgg-weights", str(inputs["vgg"]),
        "--run-dir", str(run_dir), "--name", "tiny", "--iterations", "2", "--image-size", "32", "--style-size", "48",
        "--holdout", "2", "--stability-weight", "1", "--workers", "1", "--threads", "1"])
    assert result.exit_code == 0, result.output
    return run_dir / "tiny.pth"


def test_distillation_resumes_and_names_its_teacher(inputs: dict[str, Path], teacher: Path, tmp_path: Path) -> None:  # noqa: F811
    for run, curriculum in (("straight", "32:2,32:2"), ("resumed", "32:2,32:1"), ("resumed", "32:2,32:2")):
        extra = ("--resume",) if (tmp_path / run / "checkpoint.pt").exists() else ()
        result = CliRunner().invoke(distill, distill_args(inputs, teacher, tmp_path / run, curriculum, "--init-from", "none",
                                                          *extra))
        assert result.exit_code == 0, result.output + repr(result.exception)
    straight, resumed = logged_losses(tmp_path / "straight"), logged_losses(tmp_path / "resumed")
    assert resumed == straight and [line["iteration"] for line in resumed] == [1, 2, 3, 4]
    # The teacher guides the first stage; the last trains on the style's own objective alone.
    teacher_terms = {"teacher_pixels", "teacher_features"}
    assert [teacher_terms <= set(line) for line in resumed] == [True, True, False, False]
    assert {"content", "style", "tv", "stability"} < set(resumed[-1])

    student = find_style(str(tmp_path / "resumed" / "tiny.pth"))
    assert isinstance(student.load_network(), CompactTransformerNet)
    card, teacher_card = student.card, json.loads(teacher.with_suffix(".json").read_text())
    assert card["network"] == "compact" and card["name"] == "tiny"
    assert card["teacher"]["name"] == "tiny" and card["teacher"]["weights_sha256"] == sha256_file(teacher)
    # The style's own objective is the teacher's, read from its card.
    for key in ("style_size", "content_weight", "style_weight", "tv_weight", "stability_weight"):
        assert card[key] == teacher_card[key]
    assert card["recipe"].startswith("Distilled from style tiny's TransformerNet") and card["teacher_stages"] == 1


def test_distillation_continues_a_compact_network_only(
        inputs: dict[str, Path], teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    # Given no schedule, a distillation runs distill's recipe (made tiny here), not train's ...
    monkeypatch.setattr("vidstyle.trainer.cli.DISTILL_RECIPE", Recipe(((32, 2),), 1e-4))
    first = CliRunner().invoke(distill, distill_args(inputs, teacher, tmp_path / "first", None))
    assert first.exit_code == 0, first.output + repr(first.exception)
    student = tmp_path / "first" / "tiny.pth"
    first_card = find_style(str(student)).card
    assert first_card["curriculum"] == [[32, 2]] and first_card["final_lr"] == 1e-4
    # ... and starts from the built-in compact udnie, a network that already paints.
    assert first_card["initialized_from"]["name"] == "udnie"
    # Deeper and steadier than the network it continues: the added blocks start as the identity.
    more = CliRunner().invoke(distill, distill_args(inputs, teacher, tmp_path / "more", "32:1", "--init-from", str(student),
                                                        "--teacher-stages", "0", "--blocks", "7", "--detail-blocks", "1",
                                                        "--stability-weight", "3", "--dense-blocks"))
    assert more.exit_code == 0, more.output + repr(more.exception)
    deeper = find_style(str(tmp_path / "more" / "tiny.pth"))
    card = deeper.card
    assert card["teacher_stages"] == 0 and "teacher_pixels" not in logged_losses(tmp_path / "more")[0]
    assert card["blocks"] == 7 and len(deeper.load_network().residuals) == 7 and first_card["blocks"] == 5
    assert card["detail_blocks"] == 1 and len(deeper.load_network().detail) == 1 and first_card["detail_blocks"] == 0
    assert "with 7 dense residual blocks and 1 at half the size" in card["recipe"]
    assert card["dense_blocks"] and deeper.load_network().dense and not first_card["dense_blocks"]
    assert card["stability_weight"] == 3 and "stability 3, where the teacher's is 1" in card["recipe"]
    fewer = run_cli("distill", *distill_args(inputs, teacher, tmp_path / "fewer", "32:1", "--init-from",
                                             str(tmp_path / "more" / "tiny.pth"), "--blocks", "5"))
    assert fewer.returncode != 0 and "--blocks 5: the network it starts from has 7" in fewer.stderr
    assert "Traceback" not in fewer.stderr
    assert card["network"] == "compact" and card["initialized_from"]["weights_sha256"] == sha256_file(student)
    assert card["recipe"].startswith("Started from the weights of style tiny (2 iterations: Started from the weights of style udnie")
    # A full network has no compact one beside it to continue.
    done = run_cli("distill", *distill_args(inputs, teacher, tmp_path / "full", "32:1", "--init-from", str(teacher)))
    assert done.returncode != 0 and "has no compact network" in done.stderr and "Traceback" not in done.stderr


def test_distillation_refuses_a_painting_its_teacher_was_not_trained_on(
        inputs: dict[str, Path], teacher: Path, tmp_path: Path) -> None:  # noqa: F811
    other = tmp_path / "other.png"
    other.write_bytes(inputs["style"].read_bytes() + b"\0")
    done = run_cli("distill", *distill_args(inputs | {"style": other}, teacher, tmp_path / "run", "32:2"))
    assert done.returncode != 0 and "is not the painting style tiny was trained on" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.fixture
def two_styles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`duo` with both networks, `soft` with a compact one measured well below its full one's quality,
    `shaky` with one of its quality that flickers more, and `solo` with a full one only, on the search path."""
    torch.manual_seed(0)
    for name in ("duo", "soft", "shaky", "solo"):
        save_style(TransformerNet(), tmp_path / f"{name}.pth",
                   {"name": name, "evaluation": {QUALITY_FIGURE: 50, FLICKER_FIGURE: 3.0}})
    for name, quality, flicker in (("duo", 46, 2.5), ("soft", 28, 2.5), ("shaky", 46, 4.0)):
        save_style(CompactTransformerNet(), tmp_path / "compact" / f"{name}.pth",
                   {"name": name, "network": "compact", "evaluation": {QUALITY_FIGURE: quality, FLICKER_FIGURE: flicker}})
    monkeypatch.setenv("VIDSTYLE_STYLES_PATH", str(tmp_path))
    return tmp_path


def test_a_compact_network_runs_where_there_is_one(two_styles: Path) -> None:
    assert find_style("duo", "auto").weights_path == two_styles / "compact" / "duo.pth"
    assert find_style("duo", "full").weights_path == two_styles / "duo.pth"
    assert find_style("solo", "auto").weights_path == two_styles / "solo.pth"
    assert find_style("soft", "auto").weights_path == two_styles / "soft.pth"  # 28 < 0.9 x 50: not its look
    assert find_style("shaky", "auto").weights_path == two_styles / "shaky.pth"  # flickers more than its teacher
    assert find_style("soft", "compact").weights_path == two_styles / "compact" / "soft.pth"
    assert isinstance(find_treatment("duo", network="compact").load_network(), CompactTransformerNet)
    with pytest.raises(VidstyleError, match="style solo has no compact network"):
        find_style("solo", "compact")
    with pytest.raises(VidstyleError, match="is a compact network"):
        find_style(str(two_styles / "compact" / "duo.pth"), "full")
    with pytest.raises(VidstyleError, match="--network compact is for trained styles"):
        find_treatment(painting=two_styles / "painting.png", network="compact")


def test_cli_lists_and_forces_either_network(two_styles: Path, tmp_path: Path) -> None:
    listing = run_cli("styles").stdout.splitlines()
    duo = next(index for index, line in enumerate(listing) if line.startswith("duo "))
    assert listing[duo + 1].startswith("  compact") and str(two_styles / "compact" / "duo.pth") in listing[duo + 1]
    assert not any(line.startswith("  compact") and "solo" in line for line in listing)
    # The network `--network auto` runs is the one marked: duo's compact one keeps the look, soft's does not.
    soft = next(index for index, line in enumerate(listing) if line.startswith("soft "))
    assert ["runs by default" in line for line in listing[duo : duo + 2]] == [False, True]
    assert ["runs by default" in line for line in listing[soft : soft + 2]] == [True, False]

    clip = make_sample_video(tmp_path / "clip.mp4", width=64, height=48, frames=6)
    done = run_cli("submit", clip, "--style", "solo", "--network", "compact")
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [
        "vidstyle: error: style solo has no compact network (make one with `vidstyle distill solo`)"]
    assert not (tmp_path / "clip.solo.mp4").exists()


@pytest.mark.parametrize("network", ["full", "compact"])
def test_every_control_works_with_either_network(two_styles: Path, tmp_path: Path, network: str) -> None:
    """The temporal stage, exposure matching, strength and preserve-colors, with either network."""
    clip = make_sample_video(tmp_path / "clip.mp4", width=64, height=48, frames=10)
    stylizer = Stylizer(find_treatment("duo", network=network).load_network(), resolve_device("cpu"), compile=False)
    output = stylize_file(clip, tmp_path / f"out.{network}.mp4", stylizer, temporal_strength=0.9,
                          controls=Controls(strength=0.5, preserve_colors=True))
    got, given = decode(output), decode(clip)
    assert got["frames"] == given["frames"] and np.abs(got["pixels"].astype(float) - given["pixels"]).mean() > 1
