"""Reports: EDA, the model and dataset cards (templates are package data), tables and machine facts."""
