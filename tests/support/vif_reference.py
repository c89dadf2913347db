"""The pixel-domain multiscale VIF loop of vifp_mscale.m, shared by the slow references of both metric
conventions (they differ only in the window, the filter and the decimation)."""

import numpy as np


def vif_sums(ref, dist, window, filt, decimate):
    """Numerator and denominator sums over the 4 scales.

    ``window(n)`` gives the normalised Gaussian window of edge n (sd n/5), ``filt(x, win)`` the 'valid'
    filtering, ``decimate(x)`` the factor-2 subsampling of every axis.
    """
    num = den = 0.0
    for scale in range(1, 5):
        n = 2 ** (5 - scale) + 1
        win = window(n)

        def f(x):
            return filt(x, win)

        if scale > 1:
            ref, dist = decimate(f(ref)), decimate(f(dist))
        mu1, mu2 = f(ref), f(dist)
        s1 = np.maximum(f(ref * ref) - mu1 ** 2, 0)
        s2 = np.maximum(f(dist * dist) - mu2 ** 2, 0)
        s12 = f(ref * dist) - mu1 * mu2
        g = s12 / (s1 + 1e-10)
        sv = s2 - g * s12
        g[s1 < 1e-10] = 0
        sv[s1 < 1e-10] = s2[s1 < 1e-10]
        s1[s1 < 1e-10] = 0
        g[s2 < 1e-10] = 0
        sv[s2 < 1e-10] = 0
        sv[g < 0] = s2[g < 0]
        g[g < 0] = 0
        sv[sv <= 1e-10] = 1e-10
        num += np.log10(1 + g ** 2 * s1 / (sv + 2)).sum()
        den += np.log10(1 + s1 / 2).sum()
    return num, den
