"""Control policies as a weightgen application: tasks scored by a return in a gymnasium environment
(``envs.py``), zoos of policies trained by CMA-ES (``zoo.py``, ``zoo.mode: policies``), and the report
of policies generated for a prompted return (``report.py``). gymnasium and cma are the ``control``
extra, imported where they are used."""
