"""The learning side of AMC: SB3's DDPG with AMC's additions, and the search loop.

- :mod:`agents.noise`: truncated-normal exploration with per-episode sigma decay;
- :mod:`agents.buffers`: the replay buffer that gives every transition its episode's final
  reward and centres batches with a moving baseline;
- :mod:`agents.ddpg`: split actor/critic learning rates and the exploration schedule, on
  SB3's DDPG, TD3 and SAC;
- :mod:`agents.callbacks`: episode logs, the best policy, TensorBoard curves, progress bar;
- :mod:`agents.resume`: the search state saved between episodes, so a stopped search resumes
  exactly;
- :mod:`agents.config`: :class:`~agents.config.SearchConfig`, the search's settings, and the one
  reader of a run's ``config.json``;
- :mod:`agents.run_folder`: the run folder, its ``config.json`` and the result;
- :mod:`agents.interrupt`: a clean stop on SIGINT and SIGTERM;
- :mod:`agents.search`: the loop, :func:`~agents.search.search` and
  :func:`~agents.search.resume_search`.

Imports go one way: ``agents`` -> ``envs`` -> ``amc``.
"""
