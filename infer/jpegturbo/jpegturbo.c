//go:build cgo && !nojpegturbo

#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <jpeglib.h>
#include <jerror.h>

#include "jpegturbo.h"

// jt_decode_into must round every product before adding it, as Go does on amd64
// (infer.Resampling): no fused multiply-add, whatever -march allows.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

// JT_AVX2_CLONE compiles a function twice, for AVX2 and for the baseline, and
// picks one when the program starts (an ifunc), where GCC or clang can: the
// resampling's loops then take eight floats at a time instead of four (224x224
// frames: 0.37 -> 0.34 ms per decode, BenchmarkPrepare). The results are the same
// to the bit: AVX2 brings no fused multiply-add (that is FMA, which neither
// clone gets), and every value is computed by the same operations in the same
// order, only more of them at once.
#if defined(__x86_64__) && defined(__GLIBC__) && \
	((defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 6) || (defined(__clang__) && __clang_major__ >= 14))
#define JT_AVX2_CLONE __attribute__((target_clones("avx2", "default")))
#else
#define JT_AVX2_CLONE
#endif

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

// jt_dec is the state of one decode: libjpeg's, its error manager and its
// progress monitor.
typedef struct {
	struct jpeg_decompress_struct cinfo;
	jt_error err;
	jt_progress progress;
} jt_dec;

// dec_init prepares d for a decode within lim, reporting into r. The caller
// then calls setjmp(d->err.jump) and dec_begin.
static void dec_init(jt_dec *d, const jt_limits *lim, jt_result *r) {
	memset(r, 0, sizeof *r);
	memset(d, 0, sizeof *d);
	init_error(&d->err, r);
	d->cinfo.err = &d->err.pub;
	d->progress.pub.progress_monitor = on_progress;
	d->progress.max_scans = lim->max_scans;
	d->progress.max_ms = lim->max_ms;
	clock_gettime(CLOCK_MONOTONIC, &d->progress.start);
}

// dec_begin reads the header and starts decompressing at scale/8 to the colour
// space out (for a colour JPEG), checking that the output is what jt_header
// found: width x height, with components components.
static void dec_begin(jt_dec *d, const unsigned char *data, size_t size, int scale, int gray,
	J_COLOR_SPACE out, int components, int width, int height, const jt_limits *lim) {
	j_decompress_ptr cinfo = &d->cinfo;
	jpeg_create_decompress(cinfo);
	// Set before any large allocation: the whole-image coefficient buffer of
	// a progressive JPEG is allocated in jpeg_start_decompress, and refused
	// (JERR_NO_BACKING_STORE) when larger than what is left of this.
	if (lim->max_memory > 0) {
		cinfo->mem->max_memory_to_use = (long)lim->max_memory;
	}
	cinfo->progress = &d->progress.pub;
	start(cinfo, data, size);
	if (!gray) {
		cinfo->out_color_space = out;
	}
	cinfo->scale_num = scale;
	d->err.phase = PHASE_PIXELS;
	jpeg_start_decompress(cinfo);
	if ((int)cinfo->output_width != width || (int)cinfo->output_height != height ||
		cinfo->output_components != (gray ? 1 : components)) {
		failf((j_common_ptr)cinfo, d->err.r, "output differs from the header's");
	}
}

// dec_end reads what follows the last scan (so that data cut there is refused)
// and frees libjpeg's state.
static void dec_end(jt_dec *d) {
	d->err.phase = PHASE_FINISH;
	jpeg_finish_decompress(&d->cinfo);
	jpeg_destroy_decompress(&d->cinfo);
}

void jt_decode(const unsigned char *data, size_t size, int scale, int gray,
	int width, int height, unsigned char *pix, size_t stride, const jt_limits *lim, jt_result *r) {
	jt_dec d;
	dec_init(&d, lim, r);
	if (setjmp(d.err.jump)) {
		jpeg_destroy_decompress(&d.cinfo);
		return;
	}
	dec_begin(&d, data, size, scale, gray, JCS_EXT_RGBA, 4, width, height, lim);
	j_decompress_ptr cinfo = &d.cinfo;
	JSAMPROW rows[32];
	while (cinfo->output_scanline < cinfo->output_height) {
		JDIMENSION n = cinfo->output_height - cinfo->output_scanline;
		if (n > sizeof rows / sizeof rows[0]) {
			n = sizeof rows / sizeof rows[0];
		}
		for (JDIMENSION i = 0; i < n; i++) {
			rows[i] = pix + (size_t)(cinfo->output_scanline + i) * stride;
		}
		if (jpeg_read_scanlines(cinfo, rows, n) == 0) {
			failf((j_common_ptr)cinfo, r, "no progress reading scanlines");
		}
	}
	dec_end(&d);
}

// check_taps reports whether one axis of a resampling is sound: n outputs, each
// with at least one tap, every index within [0, size).
static int check_taps(const int *start, const int *idx, int n, int size) {
	if (start[0] != 0) {
		return 0;
	}
	for (int i = 0; i < n; i++) {
		if (start[i + 1] <= start[i]) {
			return 0;
		}
	}
	for (int t = 0; t < start[n]; t++) {
		if (idx[t] < 0 || idx[t] >= size) {
			return 0;
		}
	}
	return 1;
}

// jt_hfilter is the horizontal pass of a resampling, prepared once per call:
// the taps of every output column, and, when no column has more than two (the
// bilinear filter, whenever the image is not shrunk more than 2x across), the
// same taps as two flat arrays, so that the loop has no inner loop. A column
// with one tap gets a second one of weight 0 on the same pixel: adding +0 to a
// sum of non-negative terms changes nothing, so the result is the same to the
// bit.
typedef struct {
	const jt_resample *rs;
	int two;           // every column has one or two taps: use i0, w0, i1, w1
	int xoff;          // the first column libjpeg decodes (jpeg_crop_scanline)
	int *i0, *i1;      // index into the decoded row of each column's taps
	float *w0, *w1;
	float *src;        // the decoded row, as floats
} jt_hfilter;

static void hfilter_init(j_common_ptr c, jt_hfilter *h, const jt_resample *rs, int width, int ch, int xoff) {
	h->rs = rs;
	h->xoff = xoff;
	h->two = 1;
	for (int i = 0; i < rs->width; i++) {
		if (rs->xstart[i + 1] - rs->xstart[i] > 2) {
			h->two = 0;
		}
	}
	h->src = (float *)(*c->mem->alloc_large)(c, JPOOL_IMAGE, (size_t)width * ch * sizeof(float));
	if (!h->two) {
		return;
	}
	size_t n = (size_t)rs->width;
	h->i0 = (int *)(*c->mem->alloc_large)(c, JPOOL_IMAGE, n * sizeof(int));
	h->i1 = (int *)(*c->mem->alloc_large)(c, JPOOL_IMAGE, n * sizeof(int));
	h->w0 = (float *)(*c->mem->alloc_large)(c, JPOOL_IMAGE, n * sizeof(float));
	h->w1 = (float *)(*c->mem->alloc_large)(c, JPOOL_IMAGE, n * sizeof(float));
	for (int i = 0; i < rs->width; i++) {
		int t = rs->xstart[i];
		h->i0[i] = (rs->xidx[t] - xoff) * ch;
		h->w0[i] = rs->xw[t];
		if (rs->xstart[i + 1] - t == 2) {
			h->i1[i] = (rs->xidx[t + 1] - xoff) * ch;
			h->w1[i] = rs->xw[t + 1];
		} else {
			h->i1[i] = h->i0[i];
			h->w1[i] = 0;
		}
	}
}

// hfilter writes a decoded row of width pixels of ch channels (1 or 3), from
// column h->xoff of the image, filtered horizontally, to dst as ch planes of
// rs->width floats: each value a sum of taps from zero, as infer's rowRGBA and
// rowGray add them.
JT_AVX2_CLONE
static void hfilter(jt_hfilter *h, float *restrict dst, const unsigned char *restrict row, int width, int ch) {
	const jt_resample *rs = h->rs;
	const int W = rs->width;
	float *restrict f = h->src;
	for (int j = 0; j < width * ch; j++) {
		f[j] = (float)row[j];
	}
	if (h->two) {
		const int *i0 = h->i0, *i1 = h->i1;
		const float *w0 = h->w0, *w1 = h->w1;
		for (int c = 0; c < ch; c++) {
			float *restrict out = dst + (size_t)c * W;
			const float *fc = f + c;
			for (int i = 0; i < W; i++) {
				out[i] = w0[i] * fc[i0[i]] + w1[i] * fc[i1[i]];
			}
		}
		return;
	}
	const int *start = rs->xstart, *idx = rs->xidx;
	const float *w = rs->xw;
	for (int c = 0; c < ch; c++) {
		float *restrict out = dst + (size_t)c * W;
		for (int i = 0; i < W; i++) {
			float v = 0;
			for (int t = start[i]; t < start[i + 1]; t++) {
				v += w[t] * f[(idx[t] - h->xoff) * ch + c];
			}
			out[i] = v;
		}
	}
}

JT_AVX2_CLONE
void jt_decode_into(const unsigned char *data, size_t size, int scale, int gray,
	int width, int height, const jt_resample *rs, float *dst, const jt_limits *lim, jt_result *r) {
	jt_dec d;
	dec_init(&d, lim, r);
	if (setjmp(d.err.jump)) {
		jpeg_destroy_decompress(&d.cinfo);
		return;
	}
	dec_begin(&d, data, size, scale, gray, JCS_EXT_RGB, 3, width, height, lim);
	j_decompress_ptr cinfo = &d.cinfo;
	j_common_ptr c = (j_common_ptr)cinfo;
	const int W = rs->width, H = rs->height;
	if (W <= 0 || H <= 0 || rs->ymax_taps <= 0 || !check_taps(rs->xstart, rs->xidx, W, width) ||
		!check_taps(rs->ystart, rs->yidx, H, height)) {
		failf(c, r, "resampling does not fit the decoded image");
	}
	const int ch = gray ? 1 : 3;
	const size_t ncols = (size_t)W * ch; // floats per filtered row: ch planes of W
	const int slots = rs->ymax_taps + 1;
	float *ring = (float *)(*c->mem->alloc_large)(c, JPOOL_IMAGE, (size_t)slots * ncols * sizeof(float));
	float *acc = (float *)(*c->mem->alloc_large)(c, JPOOL_IMAGE, (size_t)W * sizeof(float));
	int *tag = (int *)(*c->mem->alloc_small)(c, JPOOL_IMAGE, (size_t)slots * sizeof(int));
	unsigned char *need = (unsigned char *)(*c->mem->alloc_large)(c, JPOOL_IMAGE, (size_t)height);
	JSAMPARRAY rows = (*c->mem->alloc_sarray)(c, JPOOL_IMAGE, (JDIMENSION)width * ch, 16);
	// Decode only the columns and rows the taps read: libjpeg-turbo widens the
	// columns to whole iMCUs, and still reads the entropy-coded data of the
	// rows it skips (so damaged data there is still found), but runs no
	// inverse DCT, upsampling or colour conversion for what is cut.
	int xmin = width, xmax = 0;
	for (int t = 0; t < rs->xstart[W]; t++) {
		xmin = rs->xidx[t] < xmin ? rs->xidx[t] : xmin;
		xmax = rs->xidx[t] > xmax ? rs->xidx[t] : xmax;
	}
	// A margin of an iMCU on every side that is cut: libjpeg's fancy
	// upsampling of chroma reads the neighbours of each sample, and at the edge
	// of a crop or skip it has none (it repeats the edge), so the pixels next
	// to a cut differ from a whole decode's. Past a margin they are the same.
	int mx = cinfo->max_h_samp_factor * cinfo->min_DCT_scaled_size;
	int my = cinfo->max_v_samp_factor * cinfo->min_DCT_scaled_size;
	xmin = xmin - mx > 0 ? xmin - mx : 0;
	xmax = xmax + mx < width - 1 ? xmax + mx : width - 1;
	JDIMENSION xoff = 0, cw = (JDIMENSION)width;
	if (xmin > 0 || xmax < width - 1) {
		xoff = (JDIMENSION)xmin;
		cw = (JDIMENSION)(xmax - xmin + 1);
		jpeg_crop_scanline(cinfo, &xoff, &cw);
		if ((int)xoff > xmin || (int)(xoff + cw) <= xmax) {
			failf(c, r, "cropped columns miss the resampling's");
		}
	}
	jt_hfilter hf;
	hfilter_init(c, &hf, rs, (int)cw, ch, (int)xoff);
	for (int s = 0; s < slots; s++) {
		tag[s] = -1;
	}
	memset(need, 0, (size_t)height);
	for (int t = 0; t < rs->ystart[H]; t++) {
		need[rs->yidx[t]] = 1;
	}

	const size_t plane = (size_t)W * H;
	int ymin = rs->yidx[0] - my, ymax = rs->yidx[rs->ystart[H] - 1];
	if (ymin > 0 && jpeg_skip_scanlines(cinfo, (JDIMENSION)ymin) != (JDIMENSION)ymin) {
		failf(c, r, "could not skip the rows above the crop");
	}
	int oy = 0; // the next output row
	while (cinfo->output_scanline <= (JDIMENSION)ymax) {
		int y0 = (int)cinfo->output_scanline;
		JDIMENSION n = jpeg_read_scanlines(cinfo, rows, 16);
		if (n == 0) {
			failf(c, r, "no progress reading scanlines");
		}
		for (int i = 0; i < (int)n; i++) {
			int y = y0 + i;
			if (!need[y]) {
				continue;
			}
			hfilter(&hf, ring + (size_t)(y % slots) * ncols, rows[i], (int)cw, ch);
			tag[y % slots] = y;
			// Every output row whose last source row this is: its rows are
			// consecutive, at most ymax_taps of them, all still in the ring.
			for (; oy < H && rs->yidx[rs->ystart[oy + 1] - 1] <= y; oy++) {
				for (int t = rs->ystart[oy]; t < rs->ystart[oy + 1]; t++) {
					int sy = rs->yidx[t];
					if (tag[sy % slots] != sy) {
						failf(c, r, "resampling rows are not ascending and consecutive");
					}
				}
				for (int k = 0; k < 3; k++) {
					// Plane k of the output: plane k of the filtered rows,
					// or their one plane for grey.
					size_t from = ch == 1 ? 0 : (size_t)k * W;
					for (int j = 0; j < W; j++) {
						acc[j] = 0;
					}
					for (int t = rs->ystart[oy]; t < rs->ystart[oy + 1]; t++) {
						const float *restrict src = ring + (size_t)(rs->yidx[t] % slots) * ncols + from;
						float w = rs->yw[t];
						for (int j = 0; j < W; j++) {
							acc[j] += w * src[j];
						}
					}
					float kk = rs->k[k], bb = rs->b[k];
					if (rs->planar) {
						float *restrict out = dst + (size_t)k * plane + (size_t)oy * W;
						for (int j = 0; j < W; j++) {
							out[j] = acc[j] * kk + bb;
						}
					} else {
						float *restrict out = dst + (size_t)oy * W * 3 + k;
						for (int j = 0; j < W; j++) {
							out[3 * j] = acc[j] * kk + bb;
						}
					}
				}
			}
		}
	}
	if (oy != H) {
		failf(c, r, "resampling rows past the image");
	}
	// Skip the rows below, but read the last one: libjpeg-turbo's skip to the
	// very end marks the data as read without reading it, and data cut or
	// damaged there would go unseen.
	JDIMENSION rest = cinfo->output_height - cinfo->output_scanline;
	if (rest > 1 && jpeg_skip_scanlines(cinfo, rest - 1) != rest - 1) {
		failf(c, r, "could not skip the rows below the crop");
	}
	while (cinfo->output_scanline < cinfo->output_height) {
		if (jpeg_read_scanlines(cinfo, rows, 16) == 0) {
			failf(c, r, "no progress reading scanlines");
		}
	}
	dec_end(&d);
}
