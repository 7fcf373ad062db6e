"""Procedural street scenes in CamVid layout: the offline benchmark (see docs/architecture.md).

A scene is a pinhole camera over a flat street seen down its length: sky, a perspective road
with sidewalks, facades with windows, fences, trees, slender poles with small signs, cars,
pedestrians and rare bicyclists. Everything is drawn back to front into an *id canvas*
(painter's algorithm), so occlusion is right and the label is exactly the object drawn at each
pixel; each id carries a class, a colour and a texture. Lighting, shadows, haze, blur and a JPEG
round trip then make the image hard, in the ways the DEAL paper says matter: slender and tiny
objects, rare classes, occlusion and confusable surfaces.

Sizes in metres are projected with the camera; pixel limits (pole width 1-3 px, signs up to
~12 px) are given at 180 px image height and scale with the image.

Like fleet video, a data set is made of *drives*: a sequence of frames of one street, the camera
advancing a few metres per frame with a little yaw and pitch jitter and the traffic moving, so
consecutive frames are near-duplicates. Every frame of a drive is drawn from a generator with the
drive's seed, so the world is the same; only the camera, the traffic and the sensor noise change.
Each drive is filmed in one condition: mostly clear day, sometimes night, fog, rain, snow, another
camera (fisheye) or glare, at long-tail rates (`CONDITIONS`). Conditions change the pixels, never
the labels. A drive never straddles splits; `tags.jsonl` (see tags.py) records each frame's drive
and condition.

Modules (numpy and Pillow; no torch):

    canvas      the camera, the id canvas, class ids and drawing helpers
    scenery     the street's sides, sky, ground, facades, fences, hedges
    objects     trees, poles and signs, cars, people, bins, and where they stand
    conditions  clear, night, fog, rain, snow, fisheye, glare (`CONDITIONS`)
    render      one frame of a drive (`render_scene`, `Shot`)
    dataset     a data set of drives in CamVid layout (`plan_streets`, `write_streets`)

`deal-train synth` (training/cli.py) is its command.
"""
