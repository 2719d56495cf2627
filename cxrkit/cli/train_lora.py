"""``cxrkit train-lora``: characteristic adapters on the synthesis DiT (alone, jointly with the
orthogonality penalty, or a ZipLoRA merge of two)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cxrkit.cli._groups import TRAINING, TrainOptions
from cxrkit.cli._options import command_line, finish_training, read_record_files, training_progress

CHARACTERISTIC_NAMES = ("calcified", "border_regular", "border_irregular",
                        "texture_homogeneous", "texture_inhomogeneous", "subtlety")
"""cxrkit.synthdit.lora_training.CHARACTERISTICS' names, kept torch-free here (a test keeps
them equal)."""


@TRAINING.use("training", defaults={"steps": 1000, "lr": 1e-3, "warmup_steps": 20,
                                    "ema": 0.0, "checkpoint_every": 0},
              helps={"lr": "Peak learning rate (AdamW) of the adapters.",
                     "ema": "EMA decay of the adapter weights (0: off; the frozen backbone is "
                            "never copied)."})
def train_lora(
    model: Annotated[Path, typer.Option(
        "--model", help="The synthesis model folder (cxrkit train-synth); frozen.")],
    records: Annotated[list[Path] | None, typer.Option(
        "--records", help="JSONL records of cxrkit synth (-e blend/ct/diffusion, --source "
                          "luna16 or parametric); each nodule's characteristics select it. "
                          "Repeatable.", show_default=False)] = None,
    characteristic: Annotated[list[str] | None, typer.Option(
        "--characteristic", "-c", help="One adapter per characteristic: "
                                       + ", ".join(CHARACTERISTIC_NAMES) + ". Two or more "
                                       "train jointly.", show_default=False)] = None,
    rank: Annotated[int, typer.Option(min=1, max=256, help="LoRA rank r.")] = 8,
    alpha: Annotated[float, typer.Option(
        min=1e-6, help="LoRA alpha (the scale is alpha/r); alpha_train of the subtlety "
                       "slider.")] = 8.0,
    targets: Annotated[str, typer.Option(
        "--targets", help="Comma-separated linears to adapt: to_q, to_k, to_v, to_out.0, "
                          "ff.net.0.proj, ff.net.2 (never the modulation, embedders or output "
                          "layer).")] = "to_q,to_k,to_v,to_out.0",
    ortho_weight: Annotated[float, typer.Option(
        "--ortho-weight", min=0.0, help="Joint training: lambda of the normalised "
                                        "orthogonality penalty ||dW_i dW_j^T||^2_F / "
                                        "(||dW_i||^2 ||dW_j||^2), summed over layers and "
                                        "pairs.")] = 0.0,
    alpha_map: Annotated[str, typer.Option(
        "--alpha-map", help="Subtlety slider: alpha(s) for s = 1..5; the weight at inference "
                            "(and in training on subtlety-s nodules) is alpha(s)/--alpha. "
                            "Numbers, s, + - * / and parentheses. The source's 22+s moves "
                            "the weight by only 8 %; the shipped slider is centred, "
                            "'8*(s-3)' with --alpha 8 (weight s-3), and rises with s.")] = "22+s",
    ziplora: Annotated[list[Path] | None, typer.Option(
        "--ziplora", help="Instead: merge two adapter files (give it twice) by ZipLoRA's "
                          "learned per-column mergers on their characteristics' nodules; "
                          "writes OUT/<a>+<b>.safetensors (an ordinary adapter, rank r1+r2).",
        show_default=False)] = None,
    similarity_weight: Annotated[float, typer.Option(
        "--similarity-weight", min=0.0, help="--ziplora: lambda of the mergers' |cosine| "
                                             "penalty.")] = 0.01,
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Folder to write: <characteristic>.safetensors per adapter and "
                            "run.json.")] = Path("adapters"),
    val_fraction: Annotated[float, typer.Option(
        help="Share of patients (background radiographs) held out for validation.")] = 0.1,
    val_samples: Annotated[int, typer.Option(
        min=1, help="Held-out patches measured per characteristic.")] = 16,
    training: TrainOptions = None,  # type: ignore[assignment]  # the TRAINING options
) -> None:
    """Train characteristic adapters (LoRA) on the frozen synthesis DiT.

    One peft LoRA per characteristic on the DiT's attention/MLP linears (--targets, --rank,
    --alpha), trained on the shared loop with the backbone frozen (only the adapter weights are
    optimised, EMA'd and checkpointed). An adapter learns from the nodules of cxrkit synth
    records whose LIDC label has its trait: calcified (calcified==1), border_regular /
    border_irregular (border_irregular==0/1), texture_homogeneous / texture_inhomogeneous
    (inhomogeneous==0/1), subtlety (labelled 1..5). Records of real LUNA16 patches
    (--source luna16) and of the parametric generator (its spec implies the labels: a
    calcification pattern is calcified, lobulated/spiculated is irregular, non-solid texture is
    inhomogeneous; subtlety from synth --subtlety) mix freely; run.json and each adapter count
    what they trained on by source.

    Subtlety is a slider: a subtlety-s nodule trains the adapter at weight alpha(s)/--alpha
    (--alpha-map, default the source's 22+s), and synth --subtlety s applies that weight.

    Two or more --characteristic train jointly: each sample is drawn for one adapter from its
    positives and trains every adapter whose trait it has (the others at weight 0), plus
    --ortho-weight times the normalised orthogonality penalty of every pair (exact, from r x r
    products), so the adapters compose. Each adapter is written to its own file
    OUT/<characteristic>.safetensors (diffusers/peft keys, the LoRA config and cxrkit's fields
    in the metadata: characteristic, polarity, alpha_train, alpha map, rank, targets, backbone
    sha256, seed, data); run.json has the held-out masked MSE of each characteristic's patches
    with and without its adapter.

    --ziplora A.safetensors --ziplora B.safetensors learns ZipLoRA's per-column mergers of two
    trained adapters on their characteristics' nodules (100 steps by default is the source's
    budget: give --steps) and writes one merged adapter that synth loads like any other.

    Example:

        cxrkit synth -e blend cxr/*.png --source luna16 -n 4 -o real/ > real.jsonl
        cxrkit synth -e blend cxr/*.png --calcification all --shape spiculated -n 4 \\
            -o param/ > param.jsonl
        cxrkit train-lora --model synth-dit/ --records real.jsonl --records param.jsonl \\
            -c calcified -c border_irregular --ortho-weight 0.01 --steps 2000 -o adapters/
        cxrkit synth -e diffusion cxr.png --model synth-dit/ \\
            --adapter adapters/calcified.safetensors -n 4 -o out/
    """
    from cxrkit.synthdit import HeldOut

    if not records:
        raise typer.BadParameter("give the cxrkit synth records to train on",
                                 param_hint="--records")
    if not 0 <= val_fraction < 1:
        raise typer.BadParameter("must be in [0, 1)", param_hint="--val-fraction")
    recs = read_record_files(records)
    command = command_line()
    config = training.config(str(out))
    if ziplora:
        if characteristic:
            raise typer.BadParameter("--ziplora takes the characteristics from the two "
                                     "adapters' files", param_hint="--characteristic")
        if len(ziplora) != 2:
            raise typer.BadParameter("give exactly two adapter files", param_hint="--ziplora")
        _ziplora(model, ziplora, recs, config, similarity_weight, command)
        typer.echo(str(out))
        return
    names = list(characteristic or [])
    bad = [c for c in names if c not in CHARACTERISTIC_NAMES]
    if bad or not names:
        raise typer.BadParameter(f"{', '.join(bad) or 'none given'}: choose from "
                                 f"{', '.join(CHARACTERISTIC_NAMES)}",
                                 param_hint="--characteristic")
    if len(set(names)) != len(names):
        raise typer.BadParameter("each characteristic once", param_hint="--characteristic")
    from cxrkit.synthdit.lora_training import train_lora as train

    result = train(model, recs, names, config, rank=rank, alpha=alpha,
                   targets=[t.strip() for t in targets.split(",") if t.strip()],
                   ortho_weight=ortho_weight, alpha_map_expr=alpha_map,
                   held_out=HeldOut(fraction=val_fraction, samples=val_samples),
                   command=command, on_log=training_progress("train-lora"))
    finish_training(result, out, "train-lora")


def _ziplora(model_dir: Path, files: list[Path], records: list[dict[str, Any]], config: Any,
             similarity_weight: float, command: str) -> None:
    """Load the two adapters (checked against the model), learn the mergers, write the merged
    file and run.json."""
    from cxrkit import __version__
    from cxrkit.device import resolve_device
    from cxrkit.files import file_sha256
    from cxrkit.lora.files import load_adapter, save_adapter, unit_scale_config
    from cxrkit.synthdit import SynthDiT
    from cxrkit.synthdit.adapters import backbone_sha256
    from cxrkit.synthdit.lora_training import (
        ADAPTER_KIND,
        characteristic,
        labelled_patches,
        train_ziplora,
    )

    sha = backbone_sha256(model_dir)
    adapters = [load_adapter(f, backbone_sha256=sha) for f in files]
    chars = [characteristic(str(a.meta.get("characteristic"))) for a in adapters]
    net = SynthDiT.load(model_dir)
    s = net.settings
    patches = labelled_patches(records, s.patch_px, s.pixel_mm)
    pools = tuple([p.patch for p in patches if c.matches(p.patch.attributes)] for c in chars)
    merged, summary = train_ziplora(net, adapters[0], adapters[1], pools, steps=config.steps,
                                    batch_size=config.batch_size, lr=config.lr,
                                    similarity_weight=similarity_weight, seed=config.seed,
                                    device=resolve_device("cpu" if config.cpu
                                                          else config.device))
    name = "+".join(c.name for c in chars)
    merged.config = unit_scale_config({k: v.rank for k, v in merged.layers.items()},
                                      base=adapters[0].config)
    merged.meta = {"kind": ADAPTER_KIND, "characteristic": name, "merge": "ziplora",
                   "characteristics": [{"characteristic": c.name, "polarity": c.polarity,
                                        "label": c.label, "value": c.value} for c in chars],
                   "sources": [{"path": str(f), "sha256": file_sha256(f)} for f in files],
                   "backbone_sha256": sha, "seed": config.seed, "ziplora": summary,
                   "data": {c.name: len(p) for c, p in zip(chars, pools, strict=True)},
                   "version": __version__, "command": command}
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    digest = save_adapter(out / f"{name}.safetensors", merged)
    (out / "run.json").write_text(json.dumps({
        "cxrkit_version": __version__, "command": command, "kind": "ziplora",
        "backbone_sha256": sha, "adapters": merged.meta["sources"], "ziplora": summary,
        "data": merged.meta["data"], "output": {"path": str(out / f"{name}.safetensors"),
                                                "sha256": digest}}, indent=2) + "\n")

