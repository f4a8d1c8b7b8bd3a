"""The data layer: DataSource (base.py) and one module per spec scheme (folder, csv_source, hf,
torchvision_source, wds, catalogue, synthetic/), each a constructor `fn(arg: str, **kwargs) -> DataSource`
that specs.py imports on first use. Sources read their metadata when opened and decode an image only in
`load_image`, bounded by `max_side` / `max_pixels` (images.py)."""
