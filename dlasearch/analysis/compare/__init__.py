"""``dlasearch compare``: aggregation patterns at one parameter budget, over seeds.

``options`` parses, ``sizing`` lands every pattern on the budget, ``runner`` trains (resumable),
``statistics`` summarises (Welch + Holm), ``plots`` draws.  Re-exported here as one API.
``task=segment`` compares (pattern, decoder) rows on dense data by the data's score (``Metric``).
"""
from dlasearch.errors import CompareError
from dlasearch.analysis.compare.options import (
    ALIASES, DEFAULT_BASELINE, OPTIONS, parse_patterns, parse_seeds, parse_number, parse_budget,
    parse_blocks, parse_baseline, parse_decoders, baseline_key, short_number,
)
from dlasearch.analysis.compare.sizing import (
    STEM, CONV_STAGES, STAGE_CHANNELS, DEFAULT_BLOCKS, MIN_WIDTH, DIVISORS, MAX_MULTIPLIER, BASE_WIDTHS,
    widths_at, make_spec, Sized, size,
)
from dlasearch.analysis.compare.statistics import (
    REFERENCE, DENSE_REFERENCE, Metric, ACCURACY, metric_for, Chance, chance_of, mean_ci, welch, holm, summarize,
    size_correlation, markdown_table,
)
from dlasearch.analysis.compare.plots import (
    PATTERN_COLORS, PLOT_STYLE, plot_style, save_figure, color, plots, curves,
)
from dlasearch.analysis.compare.runner import (
    SETTINGS, check_writable, check_settings, run_path, compare, from_options, command,
)

__all__ = ['CompareError', 'ALIASES', 'DEFAULT_BASELINE', 'OPTIONS', 'parse_patterns', 'parse_seeds', 'parse_number',
           'parse_budget', 'parse_blocks', 'parse_baseline', 'parse_decoders', 'baseline_key', 'short_number', 'STEM',
           'CONV_STAGES',
           'STAGE_CHANNELS', 'DEFAULT_BLOCKS', 'MIN_WIDTH', 'DIVISORS', 'MAX_MULTIPLIER', 'BASE_WIDTHS', 'widths_at',
           'make_spec', 'Sized', 'size', 'REFERENCE', 'DENSE_REFERENCE', 'Metric', 'ACCURACY', 'metric_for',
           'Chance', 'chance_of', 'mean_ci', 'welch', 'holm', 'summarize', 'size_correlation',
           'markdown_table', 'PATTERN_COLORS', 'PLOT_STYLE', 'plot_style', 'save_figure', 'color', 'plots', 'curves', 'SETTINGS',
           'check_writable', 'check_settings', 'run_path', 'compare', 'from_options', 'command']
