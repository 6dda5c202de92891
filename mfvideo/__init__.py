"""mfvideo: MaskFeat video pretraining (HOG targets, cube masks, MViTv2) on WebDataset shards and DeepSpeed."""

__version__ = "0.1.0"
