"""objkit's packaged recipes, installed as ``objkit_recipes``: one TOML file per recipe, found
by name (``objkit run infoxlm_base``, ``objkit recipes``, ``extends = "infoxlm_base"``) through
:mod:`objkit.recipe.files`. Nothing here to import."""
