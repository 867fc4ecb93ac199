"""The sim engine's adapters: checked as the real engine checks them, and visible in the generated text."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bailu.common.errors import InvalidRequest, ModelNotFound
from bailu.common.types import ChatMessage, GenerateRequest, SamplingParams
from bailu.worker.engines.sim import SimEngine, adapter_fingerprint


def engine() -> SimEngine:
    return SimEngine("base", ttft_s=0, itl_s=0, output_tokens=8, capacity=2)


def adapter(tmp_path: Path, name: str, config: str = '{"r": 8}') -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "adapter_config.json").write_text(config)
    return folder


async def text(sim: SimEngine, adapter_name: str = "", temperature: float = 0.0) -> list[str]:
    request = GenerateRequest(
        request_id="r",
        model="base",
        adapter=adapter_name,
        messages=(ChatMessage("user", "dew"),),
        sampling=SamplingParams(max_tokens=5, temperature=temperature),
    )
    return "".join([chunk.text async for chunk in sim.generate(request)]).split()


async def test_missing_adapter_fails_like_the_real_engine(tmp_path: Path) -> None:
    sim = engine()
    for path in (tmp_path / "nowhere", tmp_path):  # no directory; a directory without adapter_config.json
        with pytest.raises(ModelNotFound) as info:
            await sim.load_adapter("poet", str(path))
        assert info.value.param == "path"
        assert "adapter_config.json missing" in info.value.message
    assert sim.adapters == {}


async def test_adapter_config_must_be_json(tmp_path: Path) -> None:
    sim = engine()
    with pytest.raises(InvalidRequest) as info:
        await sim.load_adapter("poet", str(adapter(tmp_path, "poet", "{not json")))
    assert "not a valid LoRA adapter" in info.value.message
    assert "poet" not in sim.adapters


async def test_output_depends_on_the_adapter(tmp_path: Path) -> None:
    sim = engine()
    v1 = adapter(tmp_path, "v1", '{"r": 8, "seed": 1}')
    v2 = adapter(tmp_path, "v2", '{"r": 8, "seed": 2}')
    card = await sim.load_adapter("poet@v1", str(v1))
    assert (card.name, card.kind, card.base_model) == ("poet@v1", "adapter", "base")
    await sim.load_adapter("poet@v2", str(v2))
    base, one, two = await text(sim), await text(sim, "poet@v1"), await text(sim, "poet@v2")
    assert one[0] == adapter_fingerprint(str(v1))
    assert two[0] == adapter_fingerprint(str(v2))
    assert one[0] != two[0]
    # The rest of the text, and the token count, are the base model's.
    assert one[1:] == two[1:] == base[:4]
    assert len(one) == len(base) == 5
    sampled = await text(sim, "poet@v1", temperature=0.8)
    assert sampled[0] == one[0]


async def test_unloaded_adapter_is_refused_even_after_admission(tmp_path: Path) -> None:
    sim = engine()
    await sim.load_adapter("poet", str(adapter(tmp_path, "poet")))
    request = GenerateRequest("r", "base", messages=(ChatMessage("user", "x"),), adapter="poet")
    sim.check_target(request)  # the servicer checks before the request waits for a slot
    await sim.unload_adapter("poet")
    with pytest.raises(ModelNotFound):
        await anext(aiter(sim.generate(request)))
    with pytest.raises(ModelNotFound):
        await sim.unload_adapter("poet")


async def test_load_is_idempotent_and_reloading_takes_the_new_files(tmp_path: Path) -> None:
    sim = engine()
    folder = adapter(tmp_path, "poet", '{"r": 8}')
    await sim.load_adapter("poet", str(folder))
    first = (await text(sim, "poet"))[0]
    await asyncio.gather(sim.load_adapter("poet", str(folder)), sim.load_adapter("poet", str(folder)))
    assert (await text(sim, "poet"))[0] == first
    (folder / "adapter_config.json").write_text('{"r": 16}')
    await sim.load_adapter("poet", str(folder))
    assert (await text(sim, "poet"))[0] != first
