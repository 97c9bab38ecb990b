//go:build cgo && !nojpegturbo

#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include <jpeglib.h>

#include "jpegenc.h"

typedef struct {
	struct jpeg_error_mgr pub;
	jmp_buf jump;
	char *msg;
} je_error;

static void je_exit(j_common_ptr cinfo) {
	je_error *e = (je_error *)cinfo->err;
	(*cinfo->err->format_message)(cinfo, e->msg);
	longjmp(e->jump, 1);
}

static void je_quiet(j_common_ptr cinfo, int level) {}

int je_encode(const unsigned char *pix, int w, int h, int stride, int quality,
	int progressive, int subsample, unsigned char **out, unsigned long *size, char *msg) {
	struct jpeg_compress_struct cinfo;
	je_error err;
	memset(&cinfo, 0, sizeof cinfo);
	*out = NULL;
	*size = 0;
	cinfo.err = jpeg_std_error(&err.pub);
	err.pub.error_exit = je_exit;
	err.pub.emit_message = je_quiet;
	err.msg = msg;
	if (setjmp(err.jump)) {
		jpeg_destroy_compress(&cinfo);
		return 0;
	}
	jpeg_create_compress(&cinfo);
	jpeg_mem_dest(&cinfo, out, size);
	cinfo.image_width = w;
	cinfo.image_height = h;
	cinfo.input_components = 4;
	cinfo.in_color_space = JCS_EXT_RGBA;
	jpeg_set_defaults(&cinfo);
	jpeg_set_quality(&cinfo, quality, TRUE);
	cinfo.comp_info[0].h_samp_factor = subsample;
	cinfo.comp_info[0].v_samp_factor = subsample;
	if (progressive) {
		jpeg_simple_progression(&cinfo);
	}
	jpeg_start_compress(&cinfo, TRUE);
	while (cinfo.next_scanline < cinfo.image_height) {
		JSAMPROW row = (JSAMPROW)(pix + (size_t)cinfo.next_scanline * stride);
		jpeg_write_scanlines(&cinfo, &row, 1);
	}
	jpeg_finish_compress(&cinfo);
	jpeg_destroy_compress(&cinfo);
	return 1;
}
