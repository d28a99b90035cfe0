"""The builtin tiny model (`builtin://tiny`), built on the fly for tests and demos."""
