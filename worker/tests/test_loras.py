"""LoRAs per request: the header checks, the set gate, adapters on the demo engine (against a fused LoRA), and a
worker process that serves alternating sets and refuses hostile files."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import HEIGHT, WIDTH, needs_cxx, needs_ffmpeg

from i2v_worker import demo
from i2v_worker.adapters import SLOT
from i2v_worker.errors import BadInput
from i2v_worker.loras import (
    EXPERTS,
    LoraError,
    LoraRequest,
    SetGate,
    check_header,
    check_request,
    file_sha256,
    parse_loras,
    set_key,
)  # fmt: skip
from i2v_worker.messages import Done, Run, dumps, parse_line

MAX_RANK = 8


def style_lora(directory: Path, name: str, **options: Any) -> Path:
    path = directory / f"{name}.safetensors"
    demo.build_style_lora(path, **options)
    return path


def request(path: Path, *, scale: float = 1.0, name: str | None = None, sha256: str | None = None) -> LoraRequest:
    return LoraRequest(
        name=name or path.stem, path=str(path), scale=scale, sha256=sha256 or file_sha256(str(path))
    )  # fmt: skip


def write_raw(path: Path, header: dict[str, Any], data: bytes) -> Path:
    raw = json.dumps(header).encode("utf-8")
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("user-loras")


@pytest.fixture(scope="module")
def hostile(lora_dir: Path) -> dict[str, tuple[Path, str]]:
    """Files a job must not get loaded: case -> (file, what the refusal says)."""
    good = style_lora(lora_dir, "good-for-hostile", seed=5)
    data = good.read_bytes()
    cases: dict[str, tuple[Path, str]] = {}
    pickled = lora_dir / "pickled.safetensors"
    pickled.write_bytes(pickle.dumps({"transformer.blocks.0.attn1.to_q.lora_A.weight": [0.0] * 64}, protocol=2))
    cases["pickle"] = (pickled, "not a safetensors file")
    huge = {"a.lora_A.weight": {"dtype": "F32", "shape": [1 << 40, 4], "data_offsets": [0, 16 << 40]}}
    cases["huge"] = (write_raw(lora_dir / "huge.safetensors", huge, b"\0" * 64), "truncated")
    overlap = {
        "a.lora_A.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "a.lora_B.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [8, 24]},
    }
    cases["offsets"] = (write_raw(lora_dir / "offsets.safetensors", overlap, b"\0" * 24), "inconsistent header")
    truncated = lora_dir / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) - 100])
    cases["truncated"] = (truncated, "truncated")
    plain = {"blocks.0.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    cases["no_lora"] = (write_raw(lora_dir / "plain.safetensors", plain, b"\0" * 8), "no LoRA weights")
    cases["rank"] = (style_lora(lora_dir, "rank16", rank=16), f"rank 16 is above this worker's limit of {MAX_RANK}")
    cases["shapes"] = (style_lora(lora_dir, "other-shapes", dim=48, ffn_dim=64), "does not fit this model")
    other = {"unet.down.attn.to_q.lora_A.weight": {"dtype": "F32", "shape": [4, 8], "data_offsets": [0, 128]},
             "unet.down.attn.to_q.lora_B.weight": {"dtype": "F32", "shape": [8, 4], "data_offsets": [128, 256]}}  # fmt: skip
    cases["architecture"] = (write_raw(lora_dir / "unet.safetensors", other, b"\0" * 256), "does not fit this model")
    return cases


# --- header checks and the request's limits, without torch weights --------------------------------------------------


def test_header_checks_accept_a_demo_lora(lora_dir: Path) -> None:
    header = check_header(str(style_lora(lora_dir, "checked", rank=4)), max_rank=MAX_RANK)
    assert header.rank == 4 and header.lora_tensors == header.tensors == 2 * 2 * 10


@pytest.mark.parametrize("case", ["pickle", "huge", "offsets", "truncated", "no_lora", "rank"])
def test_header_checks_refuse_hostile_files(hostile: dict[str, tuple[Path, str]], case: str) -> None:
    path, reason = hostile[case]
    with pytest.raises(LoraError, match=reason):
        check_header(str(path), max_rank=MAX_RANK)


def test_request_limits(lora_dir: Path) -> None:
    path = style_lora(lora_dir, "limits")
    with pytest.raises(LoraError, match="at most 4"):
        check_request(tuple(request(path, name=f"l{i}", sha256=f"{i:064x}") for i in range(5)))
    with pytest.raises(LoraError, match=re.escape("'big': scale must be from 0.0 to 2.0")):
        check_request((request(path, name="big", scale=2.5),))
    with pytest.raises(LoraError, match="same file"):
        check_request((request(path, name="x"), request(path, name="y")))
    assert set_key((request(path, scale=0.5),)) == ((file_sha256(str(path)), 0.5, ""),)


def test_run_and_done_carry_loras() -> None:
    sha = "ab" * 32
    line = json.dumps({
        "type": "run", "task_id": "t", "image_path": "/i.png", "prompt": "p", "width": 160, "height": 96,
        "num_frames": 9, "seed": 1, "output_path": "/o.mp4",
        "loras": [{"name": "style", "path": "/loras/style.safetensors", "scale": 0.8, "sha256": sha.upper()}],
    })  # fmt: skip
    run = parse_line(line)
    assert isinstance(run, Run) and run.loras is not None
    assert run.loras[0].sha256 == sha and run.loras[0].scale == 0.8
    assert json.loads(dumps(run))["loras"] == [
        {"name": "style", "path": "/loras/style.safetensors", "scale": 0.8, "sha256": sha}
    ]
    bad = line.replace('"scale": 0.8', '"scale": "high"')
    with pytest.raises(ValueError, match="'scale' must be a number"):
        parse_line(bad)
    done = parse_line(
        '{"type":"done","task_id":"t","path":"/o.mp4","width":160,"height":96,"num_frames":9,"fps":16,"seed":1,'
        f'"inference_seconds":1.0,"encode_seconds":0.1,"loras":[{{"name":"style","scale":0.8,"sha256":"{sha}"}}]}}'
    )
    assert isinstance(done, Done) and done.loras is not None and done.loras[0].name == "style"
    assert "loras" not in json.loads(dumps(Done(**{**done.__dict__, "loras": None})))


def test_a_lora_may_be_for_one_expert() -> None:
    sha = "cd" * 32
    item = {"name": "high", "path": "/loras/high.safetensors", "scale": 1.0, "sha256": sha}
    run = parse_line(json.dumps({
        "type": "run", "task_id": "t", "image_path": "/i.png", "prompt": "p", "width": 160, "height": 96,
        "num_frames": 9, "seed": 1, "output_path": "/o.mp4",
        "loras": [{**item, "expert": "high_noise"}, {**item, "name": "again", "expert": "both"}],
    }))  # fmt: skip
    assert isinstance(run, Run) and run.loras is not None
    assert [lora.expert for lora in run.loras] == ["high_noise", None]
    assert [lora.applies_to(1) for lora in run.loras] == [False, True]
    sent = json.loads(dumps(run))["loras"]
    assert sent[0]["expert"] == "high_noise" and "expert" not in sent[1]  # both: the field as before it existed
    with pytest.raises(LoraError, match="'expert' must be one of high_noise, low_noise or both, got 'middle'"):
        parse_loras([{**item, "expert": "middle"}])
    high, low, both = (
        LoraRequest(name=e or "both", path="/l", scale=1.0, sha256=sha, expert=e) for e in (*EXPERTS, None)
    )
    check_request((high, low))  # one file, once for each expert
    for pair in [(high, both), (both, low), (high, high)]:
        with pytest.raises(LoraError, match="the same file as"):
            check_request(pair)
    assert len({set_key((high,)), set_key((low,)), set_key((both,))}) == 3


def test_the_gate_never_admits_two_sets_and_serves_in_order() -> None:
    gate = SetGate()
    running: dict[tuple[Any, ...], int] = {}
    seen: list[tuple[str, tuple[Any, ...]]] = []
    lock = threading.Lock()
    overlaps: list[str] = []
    switches: list[tuple[Any, ...]] = []

    def job(key: tuple[Any, ...], name: str) -> None:
        def switch() -> None:
            switches.append(key)

        def on_cancel() -> None:
            raise AssertionError("not cancelled")

        with gate.admitted(key, switch=switch, cancelled=threading.Event(), on_cancel=on_cancel):
            with lock:
                running[key] = running.get(key, 0) + 1
                if len([k for k, n in running.items() if n]) > 1:
                    overlaps.append(name)
                seen.append((name, key))
            time.sleep(0.02)
            with lock:
                running[key] -= 1

    a, b = (("a", 1.0),), (("b", 1.0),)
    threads = []
    for index, key in enumerate([a, a, b, a, b, b, (), a]):
        threads.append(threading.Thread(target=job, args=(key, f"j{index}")))
        threads[-1].start()
        time.sleep(0.002)  # arrival order
    for thread in threads:
        thread.join(5)
    assert not overlaps
    assert [name for name, _ in seen] == [f"j{i}" for i in range(8)]  # first come, first served
    assert switches == [a, b, a, b, (), a]


def test_a_job_cancelled_while_it_waits_for_its_set_leaves_the_queue() -> None:
    gate = SetGate()
    a, b = (("a", 1.0),), (("b", 1.0),)
    release, cancel = threading.Event(), threading.Event()
    outcomes: list[str] = []

    class Stop(Exception):
        pass

    def stop() -> None:
        raise Stop

    def hold() -> None:
        with gate.admitted(a, switch=lambda: None, cancelled=threading.Event(), on_cancel=stop):
            release.wait(5)

    def wait_for_b() -> None:
        try:
            with gate.admitted(b, switch=lambda: None, cancelled=cancel, on_cancel=stop):
                outcomes.append("b ran")
        except Stop:
            outcomes.append("b cancelled")

    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.05)
    waiter = threading.Thread(target=wait_for_b)
    waiter.start()
    time.sleep(0.05)
    cancel.set()
    waiter.join(5)
    assert outcomes == ["b cancelled"]
    # The cancelled job no longer blocks the queue: another job of the running set is admitted at once.
    with gate.admitted(a, switch=lambda: None, cancelled=threading.Event(), on_cancel=stop):
        outcomes.append("a ran beside")
    release.set()
    holder.join(5)
    assert outcomes == ["b cancelled", "a ran beside"] and gate.active == a


# --- adapters on the demo engine ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_engine(demo_checkpoint: Path) -> Iterator[Any]:
    from i2v_worker.pipeline import Engine
    from i2v_worker.settings import Settings

    yield Engine.load(
        Settings(model_path=str(demo_checkpoint), device="cpu", slots=2, lora_max_rank=MAX_RANK, lora_cache=3)
    )


def frames(
    engine: Any, image: Path, loras: tuple[LoraRequest, ...] = (), *, width: int = WIDTH, height: int = HEIGHT
) -> np.ndarray:
    """The uint8 frames of the test job with `loras`, through the engine's checks and set gate."""
    from PIL import Image

    cancelled = threading.Event()
    prepared = engine.loras.prepare(loras)
    with engine.loras.active_for(prepared, cancelled=cancelled, steps=3):
        return engine.generate(
            image=Image.open(image).convert("RGB").resize((width, height)), prompt="a cat", negative_prompt="",
            width=width, height=height, num_frames=5, infer_steps=3, guidance_scale=3.0, seed=7,
            on_step=lambda step, total: None, cancelled=cancelled,
        )  # fmt: skip


def fused_frames(demo_checkpoint: Path, image: Path, loras: list[tuple[Path, float]]) -> np.ndarray:
    """The same job on a fresh engine with `loras` fused into its weights (no adapters left)."""
    from i2v_worker.pipeline import Engine
    from i2v_worker.settings import Settings

    engine = Engine.load(Settings(model_path=str(demo_checkpoint), device="cpu", slots=1))
    names = []
    for index, (path, _) in enumerate(loras):
        engine.pipe.load_lora_weights(str(path), adapter_name=f"fused{index}")
        names.append(f"fused{index}")
    engine.pipe.set_adapters(names, adapter_weights=[scale for _, scale in loras])
    engine.pipe.fuse_lora(components=["transformer"], lora_scale=1.0, adapter_names=names)
    engine.pipe.unload_lora_weights()
    return frames(engine, image)


def test_adapters_match_fused_loras_and_combine(
    lora_engine: Any, demo_checkpoint: Path, lora_dir: Path, image_file: Callable[..., Path]
) -> None:
    image = image_file()
    one, two = style_lora(lora_dir, "one", seed=11), style_lora(lora_dir, "two", seed=12, rank=2)
    plain = frames(lora_engine, image)
    with_one = frames(lora_engine, image, (request(one, scale=0.7),))
    with_both = frames(lora_engine, image, (request(one, scale=0.7), request(two, scale=1.3)))
    with_two = frames(lora_engine, image, (request(two, scale=1.3),))
    at_zero = frames(lora_engine, image, (request(one, scale=0.0),))
    again = frames(lora_engine, image)
    assert np.array_equal(at_zero, plain)  # scale 0 adds exact zeros
    assert np.array_equal(again, plain)  # adapters disabled: the base weights alone, as before any LoRA
    for a, b in [(plain, with_one), (plain, with_two), (with_one, with_both), (with_two, with_both)]:
        assert np.abs(a.astype(int) - b.astype(int)).max() > 10
    # Unfused adapters add B(Ax) to Wx, fused weights compute (W + BA)x: the same up to fp32 rounding.
    fused = fused_frames(demo_checkpoint, image, [(one, 0.7), (two, 1.3)])
    assert np.abs(fused.astype(int) - with_both.astype(int)).max() <= 2
    assert set(lora_engine.loras.loaded()) == {request(one).adapter_name, request(two).adapter_name}


def test_a_lora_in_wan_original_layout_combines_with_another(
    lora_engine: Any, demo_lora: Path, lora_dir: Path, image_file: Callable[..., Path]
) -> None:
    """lightx2v's layout (`diffusion_model.…lora_down/lora_up`, `diff_b` biases), as many published Wan LoRAs."""
    image = image_file()
    plain = frames(lora_engine, image)
    original = frames(lora_engine, image, (request(demo_lora),))
    both = frames(lora_engine, image, (request(demo_lora), request(style_lora(lora_dir, "beside", seed=61))))
    assert np.abs(plain.astype(int) - original.astype(int)).max() > 10
    assert np.abs(original.astype(int) - both.astype(int)).max() > 10


def test_the_cache_evicts_the_least_recently_used(
    lora_engine: Any, lora_dir: Path, image_file: Callable[..., Path]
) -> None:
    image = image_file()
    paths = [style_lora(lora_dir, f"cached{i}", seed=100 + i) for i in range(4)]
    for path in paths:
        frames(lora_engine, image, (request(path),))
    assert lora_engine.loras.loaded() == [request(p).adapter_name for p in paths[1:]]  # cache of 3
    assert set(lora_engine.pipe.transformer.peft_config) == {SLOT}  # the cache is copies, not adapters


def test_a_lora_that_does_not_fit_leaves_nothing_loaded(
    lora_engine: Any, hostile: dict[str, tuple[Path, str]], image_file: Callable[..., Path]
) -> None:
    image = image_file()
    before = set(getattr(lora_engine.pipe.transformer, "peft_config", {}))
    cached = lora_engine.loras.loaded()
    for case in ("shapes", "architecture"):
        path, reason = hostile[case]
        with pytest.raises(BadInput, match=f"LoRA '{path.stem}': {reason}"):
            frames(lora_engine, image, (request(path),))
        assert set(getattr(lora_engine.pipe.transformer, "peft_config", {})) == before
        assert lora_engine.loras.loaded() == cached
    assert frames(lora_engine, image).shape == (5, HEIGHT, WIDTH, 3)


def slot_parts(transformer: Any, which: str) -> list[Any]:
    """The slot's `lora_A` or `lora_B` layer in every layer of `transformer` that has it."""
    return [getattr(module, which)[SLOT] for module in transformer.modules() if SLOT in getattr(module, which, {})]


def test_a_job_whose_loras_together_exceed_the_slot_rank_is_refused(
    lora_engine: Any, lora_dir: Path, image_file: Callable[..., Path]
) -> None:
    wide, narrow = style_lora(lora_dir, "wide", seed=81, rank=6), style_lora(lora_dir, "narrow", seed=82, rank=4)
    cached = lora_engine.loras.loaded()
    with pytest.raises(BadInput, match=f"ranks add up to 10, above this worker's limit of {MAX_RANK}"):
        lora_engine.loras.prepare((request(wide), request(narrow)))
    assert lora_engine.loras.loaded() == cached
    assert frames(lora_engine, image_file(), (request(wide),)).shape == (5, HEIGHT, WIDTH, 3)  # alone it fits


def test_a_compiled_worker_whose_layers_take_no_slot_serves_jobs_without_loras(lora_dir: Path) -> None:
    """Layers PEFT cannot wrap (as some quantized weights): the worker starts, refuses LoRA jobs, runs the rest."""
    from types import SimpleNamespace

    import torch

    from i2v_worker.adapters import LoraAdapters

    class Unwrappable(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

        def add_adapter(self, config: Any, adapter_name: str) -> None:
            raise NotImplementedError("Float8Linear is not supported")

    adapters = LoraAdapters(
        SimpleNamespace(transformer=Unwrappable()), experts=1, max_rank=MAX_RANK, cache_size=2, compiled=True
    )
    assert adapters.prepare(()).loras == ()
    with pytest.raises(BadInput, match=r"cannot hold LoRAs \(Float8Linear is not supported\)"):
        adapters.prepare((request(style_lora(lora_dir, "unheld")),))


@pytest.fixture(scope="module")
def compiled_lora_engine(demo_checkpoint: Path) -> Iterator[Any]:
    import torch

    from i2v_worker.pipeline import Engine
    from i2v_worker.settings import Settings

    yield Engine.load(
        Settings(model_path=str(demo_checkpoint), device="cpu", slots=2, lora_max_rank=MAX_RANK, compile="on")
    )
    torch._dynamo.reset()


@needs_cxx
def test_switching_sets_on_a_compiled_worker_never_recompiles(
    compiled_lora_engine: Any, lora_engine: Any, lora_dir: Path, demo_lora: Path, image_file: Callable[..., Path]
) -> None:
    """Only the slot's tensors change between sets, never a module or a Python value the compiled blocks' guards
    check: once the first job has compiled them, new LoRAs, two at once, none, scale 0 and an earlier set again all
    run on the same graph, each video the eager worker's."""
    import torch

    image = image_file()
    one, two = style_lora(lora_dir, "compiled-one", seed=71), style_lora(lora_dir, "compiled-two", seed=72, rank=2)
    sets = [
        (request(one, scale=0.7),),
        (),
        (request(one, scale=0.7), request(two, scale=1.3)),
        (request(demo_lora),),  # a LoRA first read here, in another key layout, with biases
        (request(one, scale=0.0),),
        (request(one, scale=0.7),),
    ]
    compiled = compiled_lora_engine
    assert all(block._compiled_call_impl is not None for block in compiled.pipe.transformer.blocks)
    frames(compiled, image, sets[0])  # compiles the blocks, the slot in them
    with torch._dynamo.config.patch(error_on_recompile=True):
        videos = [frames(compiled, image, loras) for loras in sets]
    for video, loras in zip(videos, sets, strict=True):
        eager = frames(lora_engine, image, loras)
        assert np.abs(video.astype(int) - eager.astype(int)).max() <= 2, describe(loras)
    assert np.array_equal(videos[4], videos[1])  # scale 0 adds exact zeros
    assert np.array_equal(videos[5], videos[0])
    for a, b in [(videos[1], videos[0]), (videos[0], videos[2]), (videos[1], videos[3])]:
        assert np.abs(a.astype(int) - b.astype(int)).max() > 10


def describe(loras: tuple[LoraRequest, ...]) -> str:
    return ", ".join(f"{lora.name}@{lora.scale:g}" for lora in loras) or "no LoRA"


def test_user_loras_go_on_top_of_the_fused_turbo_lora(
    demo_checkpoint: Path, demo_lora: Path, lora_dir: Path, image_file: Callable[..., Path]
) -> None:
    from i2v_worker.pipeline import Engine
    from i2v_worker.settings import Settings

    turbo = Engine.load(
        Settings(model_path=str(demo_checkpoint), device="cpu", speed="turbo", lora_path=str(demo_lora))
    )
    image = image_file()
    style = style_lora(lora_dir, "on-turbo", seed=41)
    plain = frames(turbo, image)
    styled = frames(turbo, image, (request(style),))
    assert np.array_equal(frames(turbo, image, (request(style, scale=0.0),)), plain)
    assert np.abs(plain.astype(int) - styled.astype(int)).max() > 10
    assert turbo.job_steps(None) == 4  # still the distilled schedule


@pytest.fixture(scope="module")
def a14b_engine(demo_checkpoints: Callable[[str], Path]) -> Any:
    from i2v_worker.pipeline import Engine
    from i2v_worker.settings import Settings

    return Engine.load(
        Settings(model_path=str(demo_checkpoints("wan2.2-i2v-a14b-demo")), device="cpu", lora_max_rank=MAX_RANK)
    )


def slot_holds_something(transformer: Any) -> bool:
    return any(bool(layer.weight.abs().sum() > 0) for layer in slot_parts(transformer, "lora_B"))


def test_both_experts_of_a_two_expert_model_get_the_lora(
    a14b_engine: Any, lora_dir: Path, image_file: Callable[..., Path]
) -> None:
    engine, image = a14b_engine, image_file()
    style = request(style_lora(lora_dir, "experts", seed=51))
    plain = frames(engine, image, width=32, height=32)
    styled = frames(engine, image, (style,), width=32, height=32)
    assert np.abs(plain.astype(int) - styled.astype(int)).max() > 2  # the A14B demo's VAE damps it more
    assert all(slot_holds_something(t) for t in (engine.pipe.transformer, engine.pipe.transformer_2))


def test_a_lora_for_one_expert_goes_into_that_expert_only(
    a14b_engine: Any, lora_dir: Path, image_file: Callable[..., Path]
) -> None:
    engine, image = a14b_engine, image_file()
    path = style_lora(lora_dir, "one-expert", seed=52, rank=6)
    high = LoraRequest(name="high", path=str(path), scale=1.0, sha256=file_sha256(str(path)), expert="high_noise")
    low = LoraRequest(name="low", path=str(path), scale=1.0, sha256=high.sha256, expert="low_noise")
    both = LoraRequest(name="both", path=str(path), scale=1.0, sha256=high.sha256)
    videos = {}
    for label, loras in {"plain": (), "high": (high,), "low": (low,), "pair": (high, low), "both": (both,)}.items():
        videos[label] = frames(engine, image, loras, width=32, height=32)
        if label in ("high", "low"):
            held = [slot_holds_something(t) for t in (engine.pipe.transformer, engine.pipe.transformer_2)]
            assert held == [label == "high", label == "low"]
    # The same file on each expert is the file on both; each expert alone gives a third video.
    assert np.array_equal(videos["pair"], videos["both"])
    for a, b in [("plain", "high"), ("plain", "low"), ("high", "low"), ("high", "both")]:
        assert np.abs(videos[a].astype(int) - videos[b].astype(int)).max() > 0, (a, b)
    # Each expert's slot holds the LoRAs for it: rank 6 on each fits a slot of 8, rank 6 + 4 on one does not.
    narrow = style_lora(lora_dir, "one-expert-narrow", seed=53, rank=4)
    low_narrow = LoraRequest(
        name="narrow", path=str(narrow), scale=1.0, sha256=file_sha256(str(narrow)), expert="low_noise"
    )
    with pytest.raises(BadInput, match=f"ranks add up to 10, above this worker's limit of {MAX_RANK}"):
        engine.loras.prepare((both, low_narrow))
    engine.loras.prepare((high, low_narrow))


def test_a_model_with_one_transformer_refuses_a_lora_for_an_expert(lora_engine: Any, lora_dir: Path) -> None:
    path = style_lora(lora_dir, "no-expert", seed=54)
    lora = LoraRequest(name="lone", path=str(path), scale=1.0, sha256=file_sha256(str(path)), expert="low_noise")
    with pytest.raises(BadInput, match="LoRA 'lone': 'expert' low_noise is for a model with two experts"):
        lora_engine.loras.prepare((lora,))


# --- a worker process -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_worker(tmp_path_factory: pytest.TempPathFactory, demo_checkpoint: Path) -> Iterator[Any]:
    from test_e2e import Worker

    w = Worker(
        tmp_path_factory.mktemp("lora-worker"), I2V_MODEL_PATH=str(demo_checkpoint), I2V_WORKER_SLOTS="2",
        I2V_LORA_MAX_RANK=str(MAX_RANK),
    )  # fmt: skip
    assert w.next(timeout=120)["type"] == "ready"
    yield w
    w.send({"type": "shutdown"})
    w.wait()
    w.close()


def job_message(task_id: str, image: Path, output: Path, loras: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "type": "run", "task_id": task_id, "image_path": str(image), "prompt": "a cat", "width": WIDTH,
        "height": HEIGHT, "num_frames": 5, "infer_steps": 2, "guidance_scale": 3.0, "seed": 3,
        "output_path": str(output), "loras": loras,
    }  # fmt: skip


def lora_field(path: Path, scale: float, name: str | None = None, sha256: str | None = None) -> dict[str, Any]:
    return {"name": name or path.stem, "path": str(path), "scale": scale, "sha256": sha256 or file_sha256(str(path))}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@needs_ffmpeg
def test_alternating_sets_never_overlap_and_match_solo_runs(
    lora_worker: Any, lora_dir: Path, image_file: Callable[..., Path], tmp_path: Path
) -> None:
    w = lora_worker
    image = image_file()
    x, y = style_lora(lora_dir, "x", seed=21), style_lora(lora_dir, "y", seed=22)
    sets = {"A": [lora_field(x, 1.0)], "B": [lora_field(y, 0.8), lora_field(x, 0.5)]}

    solo: dict[str, str] = {}
    for label, loras in sets.items():
        w.send(job_message(f"solo{label}", image, tmp_path / f"solo{label}.mp4", loras))
        end = w.until(lambda m: m["type"] in ("done", "error"), timeout=120)[-1]
        assert end["type"] == "done", end
        solo[label] = digest(tmp_path / f"solo{label}.mp4")
    assert solo["A"] != solo["B"]

    order = ["A", "B", "A", "A", "B", "B", "A", "B"]
    pending = list(enumerate(order))
    seen: list[dict[str, Any]] = []
    ended: dict[str, dict[str, Any]] = {}

    def send_next() -> None:
        index, label = pending.pop(0)
        w.send(job_message(f"j{index}{label}", image, tmp_path / f"j{index}.mp4", sets[label]))

    send_next()
    send_next()
    while len(ended) < len(order):
        message = w.next(timeout=120)
        seen.append(message)
        if message["type"] in ("done", "error"):
            ended[message["task_id"]] = message
            if pending:
                send_next()
    assert all(m["type"] == "done" for m in ended.values()), ended
    for index, label in enumerate(order):
        done = ended[f"j{index}{label}"]
        assert digest(tmp_path / f"j{index}.mp4") == solo[label]
        assert done["loras"] == [{k: v for k, v in lora.items() if k != "path"} for lora in sets[label]]
    # While a job holds the pipeline (from its first phase to its decode, both inside the set gate), no job of
    # another set has started.
    spans: dict[str, list[int]] = {}
    for position, message in enumerate(seen):
        if message["type"] == "phase" and message["phase"] in ("encode_prompt", "decode"):
            spans.setdefault(message["task_id"], []).append(position)
    label_of = {task: task[-1] for task in spans}
    for a, (a0, a1) in spans.items():
        for b, (b0, b1) in spans.items():
            if label_of[a] != label_of[b]:
                assert a1 < b0 or b1 < a0, f"{a} and {b} ran at the same time"


@needs_ffmpeg
def test_hostile_loras_are_refused_and_the_worker_goes_on(
    lora_worker: Any, lora_dir: Path, hostile: dict[str, tuple[Path, str]], image_file: Callable[..., Path],
    tmp_path: Path,
) -> None:  # fmt: skip
    w = lora_worker
    image = image_file()
    good = style_lora(lora_dir, "good", seed=31)
    cases: list[tuple[list[dict[str, Any]], str]] = [
        ([lora_field(path, 1.0)], f"LoRA '{path.stem}': {reason}") for path, reason in hostile.values()
    ]
    cases.append(([lora_field(good, 1.0, sha256="0" * 64)], "LoRA 'good': sha256 mismatch"))
    cases.append(([lora_field(good, 2.5)], "LoRA 'good': scale must be from 0.0 to 2.0"))
    cases.append(([lora_field(good, 1.0, name=f"g{i}", sha256=f"{i:064x}") for i in range(5)], "at most 4"))
    cases.append(([lora_field(lora_dir / "missing.safetensors", 1.0, sha256="1" * 64)], "no such file"))
    for index, (loras, reason) in enumerate(cases):
        w.send(job_message(f"bad{index}", image, tmp_path / f"bad{index}.mp4", loras))
        end = w.until(lambda m: m["type"] in ("done", "error"), timeout=120)[-1]
        assert end["type"] == "error" and end["kind"] == "bad_input", end
        assert reason in end["message"], (reason, end)
    w.send(job_message("after", image, tmp_path / "after.mp4", [lora_field(good, 1.0)]))
    end = w.until(lambda m: m["type"] in ("done", "error"), timeout=120)[-1]
    assert end["type"] == "done", end
    w.send(job_message("none", image, tmp_path / "none.mp4", []))
    end = w.until(lambda m: m["type"] in ("done", "error"), timeout=120)[-1]
    assert end["type"] == "done" and "loras" not in end, end
