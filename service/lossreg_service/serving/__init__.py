"""lossreg on other serving engines: `lossreg_service.serving.ray` (Ray Serve, ``lossreg[ray]``).

KServe needs no code here: it runs the image as it is (deploy/kserve/).
"""
