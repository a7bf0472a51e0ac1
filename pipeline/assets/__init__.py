"""vidpipe's embedded default model and sample clip, and the code that regenerates them.

`python -m pipeline.assets.default_assets` rebuilds both files.
"""
