"""What a trained model holds, measured: Information Abundance, the Diversity Index, spectra and covariances of
its embedding tables and expert outputs (the paper's eqs. 1-3), read through the model contract's hooks.

Below the runner, which records IA at every epoch end with it (``record_ia: true``, figure 2); the analysis
package (``mdl-bench analyze``) builds its reports and figures from it.
"""
