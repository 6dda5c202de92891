"""mfvideo: MaskFeat video pretraining (HOG targets, cube masks, MViTv2) on WebDataset shards and DeepSpeed.

`mfvideo.load("model.pt")` gives a trained model ready to use: `.predict("clip.mp4")`, `.features("clip.mp4")`
(`mfvideo.app.inference.LoadedModel`).
"""

__version__ = "0.1.0"


def load(path, recipe=None, overrides=(), device=None):
    """The model of checkpoint `path`, described by its own record (or by `recipe`), in eval mode on `device`
    (default: the current CUDA device, else the CPU). See `mfvideo.app.inference.load_model`."""
    from mfvideo.app.inference import load_model

    return load_model(path, recipe, overrides, device)
