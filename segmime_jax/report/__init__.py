"""Tables and figures that the experiments write (paper Table 1, Figures 1-4)."""
