"""One module per timm model family (registered in ``vitprune.model.FAMILIES``): ``vit`` (VisionTransformer), ``eva``
(Eva: EVA-02, DINOv3, PE), ``beit`` (Beit). Each says only what differs from ``vitprune.model.adapter.FamilyAdapter``."""
