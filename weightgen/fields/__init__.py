"""Neural fields: families of images or shapes, one small network fitted per item, and the zoos they make.

A field network maps coordinates ``(N, d)`` in [-1, 1]^d to values ``(N, 1)``. A field family
(``FieldFamily``) holds the shared coordinates ``(P, d)``, every item's values ``(M, P, 1)`` and
its class labels ``(M,)``; ``fit_fields`` fits one network per item, all at once.
"""
from .digits import FIELD_FAMILIES, FieldFamily, digit_family, get_family
from .fit import fit_fields
from .render import render_fields, render_source  # pictures: grid, denoising strip, 3D meshes
from .shapes import ShapeFamily, make_shapes  # shape-fields-3d: occupancy and surface points
