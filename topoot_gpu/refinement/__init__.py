"""The product (SPEC 4 + 5): ``api.refine`` turns maps (+ backbone features) into masks through the
selection and the head with the backends it is given; ``op`` registers it as
``torch.ops.topoot.refine``; ``reference`` is the released pipeline, image by image."""
