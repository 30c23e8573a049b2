"""``objkit data``: fetch the evaluation sets and parallel text the docs use, from their original
public sources, into the layouts ``objkit eval`` and recipes read.

* :mod:`objkit.data.fetch.catalog`: what each dataset is (source, licence, citation, layout).
* :mod:`objkit.data.fetch.download`: HTTP downloads (progress, sha256) and the all-or-nothing output folder.
* :mod:`objkit.data.fetch.build`: how each dataset's files are made from what was downloaded.
* :mod:`objkit.data.fetch.cli`: the ``objkit data list`` / ``objkit data get`` commands.

Kept apart from :mod:`objkit.data` (which imports ``datasets`` when imported) so that ``objkit data
--help`` stays fast; ``datasets`` is imported only by the hub datasets' builders.
"""
