"""dfkd's shipped recipes (plain YAML), installed as the package `dfkd.recipes` so `--config NAME` finds them."""
