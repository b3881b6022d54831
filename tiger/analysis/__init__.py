"""Analysis: routing statistics (expert usage, faithfulness; one implementation for inference, validation and
training), the callback that records them during a run, figures, the end-of-run report and the gathered
results of multiruns."""
