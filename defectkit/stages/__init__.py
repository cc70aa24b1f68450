"""Pipeline stages, one module each.

Each module registers its stages in :data:`defectkit.registry.STAGES` with a decorator when it is
imported; the registry imports every module of this package the first time a stage is looked up
(or listed), so ``build(STAGES, dict(type=...))`` finds every stage without importing this package
first. The stage contract and the ability classes are in :mod:`defectkit.stages.base`.
"""
