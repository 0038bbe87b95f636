# S3 test server (versitygw, Apache-2.0) for the integration tests.
# Included from the top Makefile: `include tools/s3/s3.mk`.
# The binary is cached outside the checkout (see tools/s3/build-versitygw.sh),
# so this target is cheap once built.

S3_MK_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))

.PHONY: versitygw
versitygw:
	bash $(S3_MK_DIR)/build-versitygw.sh
