// The C side of package jpegturbo: self-contained calls into libjpeg, each
// with its own error manager, so that no libjpeg state outlives a call.

#ifndef INFERGATE_JPEGTURBO_H
#define INFERGATE_JPEGTURBO_H

#include <stddef.h>

// Status of a call.
enum {
	JT_OK = 0,
	JT_CORRUPT = 1, // the data is damaged: truncated, or bad entropy-coded data
	JT_FAILED = 2,  // anything else: unsupported, or a problem image/jpeg may not have
	JT_LIMIT = 3,   // stopped at one of jt_limits
};

// Limits of one jt_decode call; zero means none.
typedef struct {
	int max_scans;         // scans read, counted by the progress monitor
	long long max_ms;      // wall time, checked by the progress monitor
	long long max_memory;  // libjpeg's own allocations (max_memory_to_use)
} jt_limits;

typedef struct {
	int status;
	int width, height; // the output size (jt_header)
	int scale;         // the output is scale/8 of the source (jt_header)
	int gray;          // 1: one channel out, 0: RGBA (jt_header)
	char msg[200];     // libjpeg's message when status != JT_OK; JMSG_LENGTH_MAX
} jt_result;

// jt_header reads the header, refuses an image of more than max_pixels pixels,
// and chooses the smallest scale/8 whose output is at least min_w x min_h pixels
// (8/8 if the source is smaller).
void jt_header(const unsigned char *data, size_t size, int min_w, int min_h,
	long long max_pixels, jt_result *r);

// jt_decode decodes data at scale/8 into pix, one row every stride bytes, 4 bytes
// per pixel (1 if gray), every row in this one call. scale, gray, width and height
// must be what jt_header returned for the same data; pix must hold height rows.
// A progress monitor stops the call (JT_LIMIT) past lim's scans or time, and
// libjpeg's memory manager refuses to allocate past its memory.
void jt_decode(const unsigned char *data, size_t size, int scale, int gray,
	int width, int height, unsigned char *pix, size_t stride, const jt_limits *lim, jt_result *r);

// jt_resample is a resampling of a decoded image into a float tensor: output
// pixel (i, j) is the sum over the x taps of i and the y taps of j of the source
// pixels times their weights, then v*k+b per channel. Taps are source indices
// (0-based, in range) and weights; each axis lists the taps of output i at
// start[i] to start[i+1]. Rows of taps must be ascending and consecutive, as
// infer's resampling makes them; ymax_taps is the most taps of any output row.
typedef struct {
	int width, height;               // the output
	const int *xstart, *xidx;        // width+1 starts, then the indices
	const float *xw;
	const int *ystart, *yidx;        // height+1 starts
	const float *yw;
	int ymax_taps;
	float k[3], b[3];
	int planar;                      // 1: NCHW (three planes), 0: NHWC
} jt_resample;

// jt_decode_into decodes data as jt_decode does and writes it, resampled as rs
// says, into dst: 3 * rs->width * rs->height floats. No image is kept: each
// decoded row is filtered horizontally into a ring of rs->ymax_taps+1 rows as
// it arrives, and each output row is written once its last source row has. The
// arithmetic is infer.Preprocess.Fill's, in the same order, in float32.
void jt_decode_into(const unsigned char *data, size_t size, int scale, int gray,
	int width, int height, const jt_resample *rs, float *dst, const jt_limits *lim, jt_result *r);

// jt_version returns the libjpeg-turbo version of the headers built against.
const char *jt_version(void);

#endif
