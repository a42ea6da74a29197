"""The README of a WSInfer export: what the model is, how WSInfer and QuPath run it, and the registry entry."""

from __future__ import annotations

import json


def registry_entry(config: dict, repo_id: str | None, name: str) -> dict:
    """The `wsinfer-zoo-registry.json` entry that makes the Hub repository a named WSInfer model."""
    description = (
        f"AMLPF-CLIP {config['architecture']}: {config['num_classes']} classes "
        f"({', '.join(config['class_names'])}), {config['patch_size_pixels']} px tiles at "
        f"{config['spacing_um_px']:g} um/px"
    )
    return {"models": {name: {"description": description, "hf_repo_id": repo_id or "<org>/<repo>",
                              "hf_revision": "main"}}}


def wsinfer_model_card(export, model_dir: str, processor, hub_model_id: str | None = None) -> str:
    """Markdown model card of a WSInfer export (`export` is a `WsinferExport`)."""
    config = export.config
    name = hub_model_id.split("/")[-1] if hub_model_id else export.output_dir.resolve().name
    entry = json.dumps(registry_entry(config, hub_model_id, name), indent=2)
    classes = "\n".join(f"| {index} | {label} |" for index, label in enumerate(config["class_names"]))
    upsize = (
        f"upsized to {processor.min_short_side} px (Pillow's bilinear)" if config["patch_size_pixels"]
        < processor.min_short_side else "not upsized (already at least min_short_side)"
    )
    repo = hub_model_id or "<org>/<repo>"
    side = config["patch_size_pixels"]
    return f"""---
library_name: wsinfer
tags:
- histopathology
- wsinfer
- amlpf-clip
pipeline_tag: image-classification
---

# {name}: AMLPF-CLIP checkpoint for WSInfer and QuPath

A WSInfer model (`config.json` spec_version {config['spec_version']} + `torchscript_model.pt`) exported from the
AMLPF-CLIP checkpoint `{model_dir}` ({config['architecture']}) with
`python -m modeling_amlpf.export wsinfer`.

| | |
|---|---|
| tile | {config['patch_size_pixels']} x {config['patch_size_pixels']} px ({export.patch_size_source}) |
| spacing | {config['spacing_um_px']:g} um/px ({export.spacing_source}) |
| tile field of view | {config['patch_size_pixels'] * config['spacing_um_px']:g} um |
| classes | {config['num_classes']} |
| exactness | {export.max_probability_difference:.2e}: largest probability difference to AutoModel + the \
checkpoint's processor on {export.check_tiles} synthetic tiles |

| index | class |
|---|---|
{classes}

The TorchScript module takes WSInfer's normalised tile batch `[B, 3, {side}, {side}]` and computes the
checkpoint's evaluation views itself: the tile is {upsize},
{processor.num_crops} crops of {processor.crop_size} px are cut at the processor's evaluation grid positions and
the whole tile is resized to {processor.crop_size} px as the global view ({processor.resample}); the model's
image logits are (mean of the crop logits + global logits) / 2. WSInfer applies the softmax.

## Run it with WSInfer

```bash
pip install "wsinfer==0.6.1" "zarr<3" "tiffslide<2.6"
wsinfer run -i SLIDES_DIR -o RESULTS_DIR -c config.json -p torchscript_model.pt -n 1
python -m modeling_amlpf.report slides RESULTS_DIR   # heatmaps per class over each slide
```

`RESULTS_DIR/model-outputs-csv/` holds per-tile probabilities (`prob_<class>` columns) and
`RESULTS_DIR/model-outputs-geojson/` one GeoJSON per slide to drag onto the slide in QuPath.

## Use it by name (`wsinfer run -m`, QuPath's WSInfer extension)

The registry entry for the Hub repository `{repo}` that holds these three files:

```json
{entry}
```

`wsinfer run -m {name}` reads `~/.wsinfer-zoo/wsinfer-zoo-registry.json`: with `HF_HUB_OFFLINE=1` it uses that
file as it is (add the entry to its `models`); online it first refreshes the file from the public WSInfer zoo
(the Hub dataset `kaczmarj/wsinfer-model-zoo-json`), where the entry can be proposed so that QuPath's WSInfer
extension lists the model too. Without a registry, QuPath's WSInfer extension runs the model as a local model:
put `config.json` and `torchscript_model.pt` in a folder named after the model inside the extension's
"local model directory" (its preferences).

## Limits

- TorchScript (`torch.jit.trace`) is deprecated in recent PyTorch releases; the module was traced for this tile
  size and loads with the PyTorch it was exported with and later 2.x releases that still ship `torch.jit`.
- The tile size is fixed: WSInfer's `Resize` brings each tile to {config['patch_size_pixels']} px first.
- The spacing must match the images the model was trained on; WSInfer reads the slide's own spacing from its
  metadata and cuts tiles of {config['patch_size_pixels'] * config['spacing_um_px']:g} um.
"""
