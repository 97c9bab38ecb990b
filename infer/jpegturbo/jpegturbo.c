//go:build cgo && !nojpegturbo

#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <jpeglib.h>
#include <jerror.h>

#include "jpegturbo.h"

#ifndef JCS_EXTENSIONS
#error "package jpegturbo needs libjpeg-turbo (JCS_EXT_RGBA): install libjpeg62-turbo-dev, or build with -tags nojpegturbo"
#endif

_Static_assert(sizeof(((jt_result *)0)->msg) >= JMSG_LENGTH_MAX, "jt_result.msg is too short");

#define JT_STR2(x) #x
#define JT_STR(x) JT_STR2(x)
const char *jt_version(void) { return "libjpeg-turbo " JT_STR(LIBJPEG_TURBO_VERSION); }

// What a warning means depends on when it comes.
enum {
	PHASE_HEADER, // jpeg_read_header: image/jpeg has only checked up to SOF
	PHASE_PIXELS, // decoding the scans
	PHASE_FINISH, // reading what follows the last scan
};

typedef struct {
	struct jpeg_error_mgr pub;
	jmp_buf jump; // back to the jt_* call
	int phase;
	jt_result *r;
} jt_error;

// fail records the current message and leaves libjpeg for the setjmp of the call.
static void fail(j_common_ptr cinfo, int status) {
	jt_error *e = (jt_error *)cinfo->err;
	e->r->status = status;
	(*cinfo->err->format_message)(cinfo, e->r->msg);
	longjmp(e->jump, 1);
}

// on_error replaces libjpeg's error_exit, which would exit the process.
// Running out of the memory that max_memory_to_use allows shows as a request for
// backing store (temporary files), which this build of libjpeg does not have.
static void on_error(j_common_ptr cinfo) {
	int code = cinfo->err->msg_code;
	int status = JT_FAILED;
	if (code == JERR_INPUT_EMPTY || code == JERR_INPUT_EOF) {
		status = JT_CORRUPT;
	}
	if (code == JERR_NO_BACKING_STORE || code == JERR_OUT_OF_MEMORY) {
		jt_error *e = (jt_error *)cinfo->err;
		e->r->status = JT_LIMIT;
		if (cinfo->mem != NULL && cinfo->mem->max_memory_to_use > 0) {
			snprintf(e->r->msg, sizeof e->r->msg, "decoding needs more than %ld bytes of libjpeg memory, the limit",
				cinfo->mem->max_memory_to_use);
		} else {
			snprintf(e->r->msg, sizeof e->r->msg, "out of memory");
		}
		longjmp(e->jump, 1);
	}
	fail(cinfo, status);
}

// on_message replaces emit_message: trace messages (level >= 0) are dropped and
// nothing is printed. libjpeg recovers from corrupt data with a warning (level
// -1) and goes on, filling what is missing with grey; image/jpeg refuses such
// data, so a warning ends the call. Data that ends early (even just before the
// end marker, which image/jpeg requires too), and bad entropy-coded data in the
// scans, are corrupt; other warnings are failures for image/jpeg to judge.
// Extraneous bytes before a marker are skipped by both decoders, so that warning
// alone is ignored.
static void on_message(j_common_ptr cinfo, int level) {
	jt_error *e = (jt_error *)cinfo->err;
	if (level >= 0) {
		return;
	}
	cinfo->err->num_warnings++;
	switch (cinfo->err->msg_code) {
	case JWRN_EXTRANEOUS_DATA:
		return;
	case JWRN_JPEG_EOF:
		fail(cinfo, JT_CORRUPT);
		break;
	case JWRN_HIT_MARKER:
	case JWRN_HUFF_BAD_CODE:
	case JWRN_MUST_RESYNC:
	case JWRN_ARITH_BAD_CODE:
		if (e->phase == PHASE_PIXELS) {
			fail(cinfo, JT_CORRUPT);
		}
		break;
	}
	fail(cinfo, JT_FAILED);
}

static void failf(j_common_ptr cinfo, jt_result *r, const char *msg) {
	jt_error *e = (jt_error *)cinfo->err;
	r->status = JT_FAILED;
	snprintf(r->msg, sizeof r->msg, "%s", msg);
	longjmp(e->jump, 1);
}

// start sets cinfo, created, up on data and reads the header. The caller has
// called setjmp.
static void start(struct jpeg_decompress_struct *cinfo, const unsigned char *data, size_t size) {
	jpeg_mem_src(cinfo, data, (unsigned long)size);
	jpeg_read_header(cinfo, TRUE);
	if (cinfo->jpeg_color_space == JCS_CMYK || cinfo->jpeg_color_space == JCS_YCCK) {
		failf((j_common_ptr)cinfo, ((jt_error *)cinfo->err)->r, "CMYK JPEG: not converted to RGB");
	}
	int gray = cinfo->jpeg_color_space == JCS_GRAYSCALE;
	cinfo->out_color_space = gray ? JCS_GRAYSCALE : JCS_EXT_RGBA;
	// The accurate integer IDCT. It only matters at scale 8/8: the scaled
	// IDCTs have no fast variant. There JDCT_IFAST is about 2% faster on the
	// sample photos and doubles the difference from image/jpeg (mean absolute
	// difference 0.66 -> 1.37 of 255 on dog.jpg).
	cinfo->dct_method = JDCT_ISLOW;
	// Triangle-filtered chroma (the default). When scaling, libjpeg-turbo
	// decodes chroma with a larger IDCT instead of upsampling it, so turning
	// this off saves nothing measurable.
	cinfo->do_fancy_upsampling = TRUE;
	cinfo->scale_denom = 8;
}

// jt_progress is libjpeg's progress monitor, which the decoder calls for
// every row of blocks of every scan it reads, and of the output: the way
// libjpeg's documentation gives to bound the scans of a progressive JPEG
// (djpeg -maxscans), and here its time too.
typedef struct {
	struct jpeg_progress_mgr pub;
	int max_scans;
	long long max_ms;
	struct timespec start;
} jt_progress;

static long long elapsed_ms(const struct timespec *start) {
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (long long)(now.tv_sec - start->tv_sec) * 1000 + (now.tv_nsec - start->tv_nsec) / 1000000;
}

static void on_progress(j_common_ptr cinfo) {
	jt_progress *p = (jt_progress *)cinfo->progress;
	jt_error *e = (jt_error *)cinfo->err;
	j_decompress_ptr d = (j_decompress_ptr)cinfo;
	if (p->max_scans > 0 && d->input_scan_number > p->max_scans) {
		e->r->status = JT_LIMIT;
		snprintf(e->r->msg, sizeof e->r->msg, "more than %d scans, the limit", p->max_scans);
		longjmp(e->jump, 1);
	}
	if (p->max_ms > 0 && elapsed_ms(&p->start) > p->max_ms) {
		e->r->status = JT_LIMIT;
		snprintf(e->r->msg, sizeof e->r->msg, "decoding took longer than %lld ms, the limit", p->max_ms);
		longjmp(e->jump, 1);
	}
}

static void init_error(jt_error *e, jt_result *r) {
	jpeg_std_error(&e->pub);
	e->pub.error_exit = on_error;
	e->pub.emit_message = on_message;
	e->phase = PHASE_HEADER;
	e->r = r;
}

void jt_header(const unsigned char *data, size_t size, int min_w, int min_h,
	long long max_pixels, jt_result *r) {
	struct jpeg_decompress_struct cinfo;
	jt_error err;
	memset(r, 0, sizeof *r);
	memset(&cinfo, 0, sizeof cinfo);
	init_error(&err, r);
	cinfo.err = &err.pub;
	if (setjmp(err.jump)) {
		jpeg_destroy_decompress(&cinfo);
		return;
	}
	jpeg_create_decompress(&cinfo);
	start(&cinfo, data, size);
	if ((long long)cinfo.image_width * cinfo.image_height > max_pixels) {
		char msg[100];
		snprintf(msg, sizeof msg, "image is %ux%u pixels, limit is %lld",
			cinfo.image_width, cinfo.image_height, max_pixels);
		failf((j_common_ptr)&cinfo, r, msg);
	}
	int scale;
	for (scale = 1;; scale++) {
		cinfo.scale_num = scale;
		jpeg_calc_output_dimensions(&cinfo);
		if (scale == 8 || ((long)cinfo.output_width >= min_w && (long)cinfo.output_height >= min_h)) {
			break;
		}
	}
	r->width = (int)cinfo.output_width;
	r->height = (int)cinfo.output_height;
	r->scale = scale;
	r->gray = cinfo.out_color_space == JCS_GRAYSCALE;
	jpeg_destroy_decompress(&cinfo);
}

void jt_decode(const unsigned char *data, size_t size, int scale, int gray,
	int width, int height, unsigned char *pix, size_t stride, const jt_limits *lim, jt_result *r) {
	struct jpeg_decompress_struct cinfo;
	jt_error err;
	jt_progress progress;
	memset(r, 0, sizeof *r);
	memset(&cinfo, 0, sizeof cinfo);
	memset(&progress, 0, sizeof progress);
	init_error(&err, r);
	cinfo.err = &err.pub;
	progress.pub.progress_monitor = on_progress;
	progress.max_scans = lim->max_scans;
	progress.max_ms = lim->max_ms;
	clock_gettime(CLOCK_MONOTONIC, &progress.start);
	if (setjmp(err.jump)) {
		jpeg_destroy_decompress(&cinfo);
		return;
	}
	jpeg_create_decompress(&cinfo);
	// Set before any large allocation: the whole-image coefficient buffer of
	// a progressive JPEG is allocated in jpeg_start_decompress, and refused
	// (JERR_NO_BACKING_STORE) when larger than what is left of this.
	if (lim->max_memory > 0) {
		cinfo.mem->max_memory_to_use = (long)lim->max_memory;
	}
	cinfo.progress = &progress.pub;
	start(&cinfo, data, size);
	cinfo.scale_num = scale;
	err.phase = PHASE_PIXELS;
	jpeg_start_decompress(&cinfo);
	if ((int)cinfo.output_width != width || (int)cinfo.output_height != height ||
		cinfo.output_components != (gray ? 1 : 4)) {
		failf((j_common_ptr)&cinfo, r, "output differs from the header's");
	}
	JSAMPROW rows[32];
	while (cinfo.output_scanline < cinfo.output_height) {
		JDIMENSION n = cinfo.output_height - cinfo.output_scanline;
		if (n > sizeof rows / sizeof rows[0]) {
			n = sizeof rows / sizeof rows[0];
		}
		for (JDIMENSION i = 0; i < n; i++) {
			rows[i] = pix + (size_t)(cinfo.output_scanline + i) * stride;
		}
		if (jpeg_read_scanlines(&cinfo, rows, n) == 0) {
			failf((j_common_ptr)&cinfo, r, "no progress reading scanlines");
		}
	}
	err.phase = PHASE_FINISH;
	jpeg_finish_decompress(&cinfo);
	jpeg_destroy_decompress(&cinfo);
}
