"""The configuration: what an experiment is (:mod:`~pipeline.config.schema`), how it is
composed from ``conf/`` and overrides (:mod:`~pipeline.config.compose`), the value rules a type
cannot state (:mod:`~pipeline.config.validation`), and where things live
(:mod:`~pipeline.config.paths`). Nothing here imports torch: a mistyped key is refused in well
under a second. The strategies' own parameters are checked one level up, by
:func:`pipeline.experiment.compose`.

Why the composition is our own and not Hydra's compose API: ``conf/`` is Hydra-shaped (config
groups as folders, an experiment's ``defaults`` list, ``group=choice`` and ``key=value``
overrides), but

- hydra-core 1.3.8, the newest on PyPI (checked 2026-12-06), requires ``omegaconf<2.4``; the
  pipeline pins OmegaConf 2.4.0, so moving would mean going back a version of the library that
  types and validates every config;
- Hydra's compose API keeps global state (``GlobalHydra``, ``initialize_config_dir``) that must be
  cleared between calls in one process, while a sweep composes a config per trial, a comparison
  one per strategy and seed, and the tests hundreds, in one process;
- what we need of it is small: :mod:`~pipeline.config.compose` is one module, and composing
  ``seed_forgetting`` with overrides takes milliseconds
  (``benchmarks/composition.py`` measures ours against Hydra's in an isolated environment:
  docs/measured/composition.md).
"""
