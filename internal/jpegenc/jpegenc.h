#ifndef INFERGATE_JPEGENC_H
#define INFERGATE_JPEGENC_H

// je_encode compresses w x h RGBA pixels (stride bytes a row) into a JPEG that
// libjpeg allocates in *out (the caller frees it, also on failure). subsample
// is 1 (4:4:4) or 2 (4:2:0). It returns 1, or 0 with libjpeg's message in msg
// (200 bytes).
int je_encode(const unsigned char *pix, int w, int h, int stride, int quality,
	int progressive, int subsample, unsigned char **out, unsigned long *size, char *msg);

#endif
