from .runner import StudyError, find_study, load_study, run_study, study_configs

__all__ = ["StudyError", "find_study", "load_study", "run_study", "study_configs"]
