"""The recipes: one `get_config(arg)` file per recipe (big_vision's convention), read by path with
`launch/main.py --config=configs/<recipe>.py:<arg>` or by name with `speechfuse.config.load_config`.

Installed with the package as `speechfuse.configs` (pyproject.toml maps this folder there), so that a
non-editable install finds them too (`speechfuse.config.recipe_path`).
"""
