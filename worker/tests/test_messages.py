"""Messages: the shared fixtures, parsing, bad lines, serialising."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from i2v_worker.messages import (
    Cancel,
    Done,
    Error,
    Fatal,
    Phase,
    Progress,
    ProtocolError,
    Ready,
    Run,
    Shutdown,
    SpeedInfo,
    dumps,
    parse_line,
    to_object,
)

FIXTURES = Path(__file__).resolve().parents[1] / "protocol" / "fixtures.jsonl"
TASK = "0123456789abcdef0123456789abcdef"


def fixtures() -> list[dict[str, object]]:
    return [json.loads(line) for line in FIXTURES.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.parametrize("fixture", fixtures(), ids=lambda f: str(f["name"]))
def test_fixture_round_trips(fixture: dict[str, object]) -> None:
    line = json.dumps(fixture["message"])
    message = parse_line(line)
    assert message.type == fixture["message"]["type"]  # type: ignore[index]
    assert to_object(message) == fixture["message"]
    again = dumps(message)
    assert "\n" not in again
    assert json.loads(again) == fixture["message"]
    assert parse_line(again) == message


def test_fixtures_cover_every_message_type() -> None:
    types = {f["message"]["type"] for f in fixtures()}  # type: ignore[index]
    assert types == {"ready", "progress", "done", "error", "fatal", "run", "cancel", "shutdown"}
    kinds = {f["message"]["kind"] for f in fixtures() if f["message"]["type"] == "error"}  # type: ignore[index]
    assert kinds == {"oom", "bad_input", "cancelled", "internal"}


def test_unknown_fields_are_ignored_and_defaults_apply() -> None:
    message = parse_line(
        '{"type":"run","task_id":"t","image_path":"/i.png","prompt":"p","width":16,"height":32,"num_frames":5,'
        '"infer_steps":2,"guidance_scale":3,"seed":0,"output_path":"/o.mp4","future_field":[1,2]}'
    )
    assert isinstance(message, Run)
    assert message.negative_prompt == ""
    assert message.guidance_scale == 3.0 and isinstance(message.guidance_scale, float)


def test_non_ascii_text_survives() -> None:
    message = Error(task_id=TASK, kind="internal", message='失败: \u2028 "quoted" \n newline')
    line = dumps(message)
    assert "\n" not in line
    assert parse_line(line.encode("utf-8")) == message


@pytest.mark.parametrize(
    ("line", "task_id"),
    [
        ("", None),
        ("not json", None),
        ("[1, 2]", None),
        ('"run"', None),
        ("{}", None),
        ('{"type": "launch", "task_id": "x"}', "x"),
        ('{"type": 7}', None),
        ('{"type": "cancel"}', None),
        ('{"type": "cancel", "task_id": ""}', None),
        ('{"type": "run", "task_id": "x"}', "x"),
        (
            '{"type": "run", "task_id": "x", "image_path": "/i.png", "prompt": "p", "width": "16", "height": 16,'
            ' "num_frames": 5, "infer_steps": 2, "guidance_scale": 3, "seed": 0, "output_path": "/o.mp4"}',
            "x",
        ),
        (
            '{"type": "run", "task_id": "x", "image_path": "/i.png", "prompt": "p", "width": true, "height": 16,'
            ' "num_frames": 5, "infer_steps": 2, "guidance_scale": 3, "seed": 0, "output_path": "/o.mp4"}',
            "x",
        ),
        (
            '{"type": "run", "task_id": "x", "image_path": "/i.png", "prompt": "p", "width": 16, "height": 16,'
            ' "num_frames": 5, "infer_steps": 2, "guidance_scale": 3, "seed": -1, "output_path": "/o.mp4"}',
            "x",
        ),
        ('{"type": "error", "task_id": "x", "kind": "meltdown", "message": "m"}', "x"),
        (
            '{"type": "ready", "protocol": 1, "model": {"id": "m"}, "device": "cpu", "dtype": "float32", "slots": 1,'
            ' "memory": {"free_bytes": null, "bytes_per_token": null}}',
            None,
        ),
    ],
)
def test_bad_lines_raise_protocol_error(line: str, task_id: str | None) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_line(line)
    assert info.value.task_id == task_id


def test_invalid_utf8_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        parse_line(b'{"type": "shutdown", "x": "\xff"}')


def test_phase_message() -> None:
    line = f'{{"type":"phase","task_id":"{TASK}","phase":"decode"}}'
    message = parse_line(line)
    assert message == Phase(task_id=TASK, phase="decode")
    assert dumps(message) == line
    for phase in ("encode_prompt", "encode_image", "denoise", "decode", "encode_video"):
        assert parse_line(dumps(Phase(task_id=TASK, phase=phase))) == Phase(task_id=TASK, phase=phase)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="'phase' must be one of") as info:
        parse_line('{"type":"phase","task_id":"t","phase":"upscale"}')
    assert info.value.task_id == "t"
    with pytest.raises(ProtocolError):
        parse_line('{"type":"phase","task_id":"","phase":"decode"}')


def test_fatal_and_shutdown_serialise_minimally() -> None:
    assert dumps(Shutdown()) == '{"type":"shutdown"}'
    assert dumps(Fatal(message="x")) == '{"type":"fatal","message":"x"}'
    assert dumps(Cancel(task_id="t")) == '{"type":"cancel","task_id":"t"}'


def test_messages_of_a_worker_without_speed_presets_still_parse() -> None:
    ready = parse_line(
        '{"type":"ready","protocol":1,"model":{"id":"m","native_area":256,"size_multiple":16,"fps":16},'
        '"device":"cpu","dtype":"float32","slots":1,"memory":{"free_bytes":null,"bytes_per_token":null}}'
    )
    assert isinstance(ready, Ready) and ready.speed == SpeedInfo(preset="quality")
    done = parse_line(
        '{"type":"done","task_id":"t","path":"/v.mp4","width":16,"height":16,"num_frames":5,"fps":16,"seed":1,'
        '"inference_seconds":1.0,"encode_seconds":0.1}'
    )
    assert isinstance(done, Done) and (done.infer_steps, done.guidance_scale) == (None, None)
    assert done.model is None and done.guidance_scale_2 is None


def test_a_ready_of_a_worker_before_the_model_table_still_parses() -> None:
    ready = parse_line(
        '{"type":"ready","protocol":1,"model":{"id":"m","native_area":256,"size_multiple":16,"fps":16},'
        '"device":"cpu","dtype":"float32","slots":1,"memory":{"free_bytes":null,"bytes_per_token":null}}'
    )
    assert isinstance(ready, Ready)
    model = ready.model
    assert (model.sizes, model.max_frames, model.last_image, model.experts, model.default_infer_steps) == (
        (), None, "none", 1, None,
    )  # fmt: skip
    assert (ready.memory.cpu_offload, ready.memory.vae_tiling) == (False, False)


def test_fields_that_do_not_apply_are_left_out() -> None:
    """A one-expert model's progress and a job without the newer options read exactly as before they existed."""
    assert (
        dumps(Progress(task_id="t", step=1, total_steps=2))
        == '{"type":"progress","task_id":"t","step":1,"total_steps":2}'
    )
    expert = Progress(task_id="t", step=1, total_steps=2, expert="high_noise")
    assert parse_line(dumps(expert)) == expert
    run = Run(task_id="t", image_path="/i.png", prompt="p", width=16, height=16, num_frames=5, seed=0, output_path="/o")
    assert set(json.loads(dumps(run))) == {
        "type", "task_id", "image_path", "prompt", "negative_prompt", "width", "height", "num_frames", "seed",
        "output_path",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ('{"type":"progress","task_id":"t","step":1,"total_steps":2,"expert":"middle_noise"}', "expert"),
        (
            '{"type":"run","task_id":"t","image_path":"/i.png","prompt":"p","width":16,"height":16,"num_frames":5,'
            '"seed":0,"output_path":"/o.mp4","last_image_path":""}',
            "last_image_path",
        ),
        (
            '{"type":"run","task_id":"t","image_path":"/i.png","prompt":"p","width":16,"height":16,"num_frames":5,'
            '"seed":0,"output_path":"/o.mp4","guidance_scale_2":"high"}',
            "guidance_scale_2",
        ),
        (
            '{"type":"ready","protocol":1,"model":{"id":"m","native_area":256,"size_multiple":16,"fps":16,'
            '"last_image":"sometimes"},"device":"cpu","dtype":"float32","slots":1,'
            '"memory":{"free_bytes":null,"bytes_per_token":null}}',
            "last_image",
        ),
        (
            '{"type":"ready","protocol":1,"model":{"id":"m","native_area":256,"size_multiple":16,"fps":16,'
            '"memory_gib":{"resident_gib":"lots"}},"device":"cpu","dtype":"float32","slots":1,'
            '"memory":{"free_bytes":null,"bytes_per_token":null}}',
            "memory_gib",
        ),
    ],
    ids=["expert", "empty-last-image", "guidance-2", "model-last-image", "model-memory"],
)
def test_bad_new_fields_are_protocol_errors(line: str, field: str) -> None:
    with pytest.raises(ProtocolError, match=field):
        parse_line(line)


@pytest.mark.parametrize(
    "speed",
    ['{"preset":"warp"}', '{"preset":"fast","compiled":"yes"}', '{"preset":"fast","cache_threshold":"high"}', "[]"],
)
def test_a_bad_speed_object_is_a_protocol_error(speed: str) -> None:
    with pytest.raises(ProtocolError, match=r"speed|preset"):
        parse_line(
            '{"type":"ready","protocol":1,"model":{"id":"m","native_area":256,"size_multiple":16,"fps":16},'
            f'"device":"cpu","dtype":"float32","slots":1,"memory":{{"free_bytes":null,"bytes_per_token":null}},'
            f'"speed":{speed}}}'
        )
