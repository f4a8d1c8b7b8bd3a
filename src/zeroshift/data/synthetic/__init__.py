"""The `synthetic:` data source: images made from prompts (class names x context phrases), for `distill`.

Popp, Metzen & Hein (2024) distil a VLM's image tower into a small student on synthetic images. Two
renderers make them: `clipart` (default, offline, fast) composites a clip art whose path words match
the class onto a random background with random scale, rotation, flip and colour jitter, styled by the
context phrase; `diffusers` runs a text-to-image pipeline once over every prompt and keeps the PNGs
under $ZEROSHIFT_HOME/synthetic. Row i is deterministic for (spec, i) in any process.

Spec: `synthetic:classes=fashion-mnist,n=2000,seed=0,size=128` (options in `create.create`). Modules:
prompts (options, prompt set), base (the rows every renderer shares), clipart_files (which clip art,
decoded and cached), clipart and diffusion (the two renderers), create (the spec's constructor).
"""
