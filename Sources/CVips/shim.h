#ifndef I2V_CVIPS_SHIM_H
#define I2V_CVIPS_SHIM_H

// libvips for Swift.
//
// Swift cannot call C variadic functions, and most libvips operations take a NULL-terminated list of
// optional named arguments. Each wrapper below fixes one such call with the options the image intake
// needs, so Swift only ever sees plain C functions. Every function returns 0 on success and -1 on error
// (the message is then in vips_error_buffer()), exactly like the libvips call it wraps. Output images are
// new references that the caller must release with g_object_unref(); output buffers must be released
// with g_free().

#include <vips/vips.h>
// Not part of vips.h: the switch for run-time SIMD code generation (see i2v_vips_start).
#include <vips/vector.h>

// MARK: - process set-up

/// Starts libvips once for the process and applies the intake's safety settings:
/// - the operation cache is off (it is keyed on buffer addresses, and it would keep references to
///   images and buffers that the intake has already released);
/// - every loader libvips marks as untrusted (SVG, PDF, ImageMagick, Matlab, FITS, ...) is blocked, and
///   then every loader is blocked except those for the raster formats the service accepts
///   (JPEG, PNG, WebP, GIF, TIFF, HEIF/AVIF), so hostile bytes only ever reach those decoders;
/// - run-time SIMD code generation (liborc) is off. libvips compiles an orc program for each downscale
///   and frees it when the operation is disposed; orc 0.4.33 (Debian bookworm) frees compiled code
///   without taking its global lock, so a free racing a compile on another intake thread corrupts
///   orc's code list and the process dies with SIGSEGV inside liborc under concurrent submits. Later
///   orc releases take the lock; without orc libvips runs its plain C loops instead.
static inline int i2v_vips_start(const char *argv0) {
    if (vips_init(argv0) != 0) {
        return -1;
    }
    vips_vector_set_enabled(FALSE);
    vips_cache_set_max(0);
    vips_cache_set_max_mem(0);
    vips_cache_set_max_files(0);
    vips_block_untrusted_set(TRUE);
    vips_operation_block_set("VipsForeignLoad", TRUE);
    vips_operation_block_set("VipsForeignLoadJpeg", FALSE);
    vips_operation_block_set("VipsForeignLoadPng", FALSE);
    vips_operation_block_set("VipsForeignLoadWebp", FALSE);
    vips_operation_block_set("VipsForeignLoadNsgif", FALSE);
    vips_operation_block_set("VipsForeignLoadTiff", FALSE);
    vips_operation_block_set("VipsForeignLoadHeif", FALSE);
    return 0;
}

// MARK: - intake pipeline

/// Opens `buf` and reads only its header (no pixels are decoded): width, height, bands, orientation.
/// The buffer is not copied and must outlive the returned image.
static inline VipsImage *i2v_open_header(const void *buf, size_t len) {
    return vips_image_new_from_buffer(buf, len, "",
        "fail_on", VIPS_FAIL_ON_ERROR,
        NULL);
}

/// Decodes `buf` with shrink-on-load where the format has it, applies the EXIF orientation, and scales
/// the image to cover width x height, then crops the centre to exactly width x height. Truncated or corrupt
/// data is an error. The buffer is not copied and must outlive `out` and everything made from it.
static inline int i2v_thumbnail_cover(void *buf, size_t len, VipsImage **out, int width, int height) {
    return vips_thumbnail_buffer(buf, len, out, width,
        "height", height,
        "size", VIPS_SIZE_BOTH,
        "crop", VIPS_INTERESTING_CENTRE,
        "fail_on", VIPS_FAIL_ON_ERROR,
        "option_string", "fail_on=error",
        NULL);
}

static inline int i2v_colourspace(VipsImage *in, VipsImage **out, VipsInterpretation space) {
    return vips_colourspace(in, out, space, NULL);
}

/// Flattens the alpha channel (the last band) onto white. `max_alpha` is 255 for 8-bit images and 65535
/// for 16-bit ones; white is `max_alpha` in every band.
static inline int i2v_flatten_white(VipsImage *in, VipsImage **out, double max_alpha) {
    double white[8] = { max_alpha, max_alpha, max_alpha, max_alpha, max_alpha, max_alpha, max_alpha, max_alpha };
    int n = in->Bands - 1;
    if (n < 1) {
        n = 1;
    }
    if (n > 8) {
        n = 8;
    }
    VipsArrayDouble *background = vips_array_double_new(white, n);
    int result = vips_flatten(in, out,
        "background", background,
        "max_alpha", max_alpha,
        NULL);
    vips_area_unref(VIPS_AREA(background));
    return result;
}

static inline int i2v_cast_uchar(VipsImage *in, VipsImage **out) {
    return vips_cast(in, out, VIPS_FORMAT_UCHAR, NULL);
}

static inline int i2v_extract_band(VipsImage *in, VipsImage **out, int band, int n) {
    return vips_extract_band(in, out, band, "n", n, NULL);
}

static inline int i2v_bandjoin3(VipsImage *in, VipsImage **out) {
    VipsImage *bands[3] = { in, in, in };
    return vips_bandjoin(bands, out, 3, NULL);
}

static inline int i2v_extract_area(VipsImage *in, VipsImage **out, int left, int top, int width, int height) {
    return vips_extract_area(in, out, left, top, width, height, NULL);
}

/// Scales by `hscale` horizontally and `vscale` vertically (lanczos3).
static inline int i2v_resize(VipsImage *in, VipsImage **out, double hscale, double vscale) {
    return vips_resize(in, out, hscale, "vscale", vscale, NULL);
}

/// Lossless PNG, 8 bits per sample, no metadata (no EXIF, no ICC profile: the pixels are already sRGB).
static inline int i2v_pngsave(VipsImage *in, void **buf, size_t *len, int compression) {
    return vips_pngsave_buffer(in, buf, len,
        "compression", compression,
        "strip", TRUE,
        NULL);
}

// MARK: - helpers for tests and diagnostics

static inline int i2v_jpegsave(VipsImage *in, void **buf, size_t *len, int quality) {
    return vips_jpegsave_buffer(in, buf, len, "Q", quality, NULL);
}

static inline int i2v_webpsave(VipsImage *in, void **buf, size_t *len, int lossless) {
    return vips_webpsave_buffer(in, buf, len, "lossless", lossless, NULL);
}

static inline int i2v_gifsave(VipsImage *in, void **buf, size_t *len) {
    return vips_gifsave_buffer(in, buf, len, NULL);
}

static inline int i2v_avifsave(VipsImage *in, void **buf, size_t *len) {
    return vips_heifsave_buffer(in, buf, len, "compression", VIPS_FOREIGN_HEIF_COMPRESSION_AV1, "Q", 90, NULL);
}

static inline int i2v_tiffsave(VipsImage *in, void **buf, size_t *len) {
    return vips_tiffsave_buffer(in, buf, len, NULL);
}

/// PNG with the given options: `palette` writes an 8-bit palette image; `bitdepth` is 8 or 16.
static inline int i2v_pngsave_options(VipsImage *in, void **buf, size_t *len, int palette, int bitdepth) {
    return vips_pngsave_buffer(in, buf, len,
        "palette", palette,
        "bitdepth", bitdepth,
        NULL);
}

/// The same pixels with another interpretation (e.g. CMYK, RGB16), to make test images.
static inline int i2v_copy_interpretation(VipsImage *in, VipsImage **out, VipsInterpretation interpretation) {
    return vips_copy(in, out, "interpretation", interpretation, NULL);
}

/// 8-bit samples to 16-bit ones (value * 257), to make 16-bit test images.
static inline int i2v_widen_to_ushort(VipsImage *in, VipsImage **out) {
    VipsImage *scaled = NULL;
    if (vips_linear1(in, &scaled, 257.0, 0.0, NULL) != 0) {
        return -1;
    }
    int result = vips_cast(scaled, out, VIPS_FORMAT_USHORT, NULL);
    g_object_unref(scaled);
    return result;
}

/// Loads a whole image from memory (random access), for checking results.
static inline VipsImage *i2v_load_buffer(const void *buf, size_t len) {
    return vips_image_new_from_buffer(buf, len, "", "fail_on", VIPS_FAIL_ON_ERROR, NULL);
}

typedef struct {
    int width;
    int height;
    int count;
} I2VImageCount;

static inline void *i2v_count_image(VipsObject *object, void *a, void *b) {
    (void)b;
    I2VImageCount *query = (I2VImageCount *)a;
    if (VIPS_IS_IMAGE(object)) {
        VipsImage *image = VIPS_IMAGE(object);
        if (query->width == 0 || (image->Xsize == query->width && image->Ysize == query->height)) {
            query->count += 1;
        }
    }
    return NULL;
}

/// The number of live libvips images of exactly width×height (any size when width is 0): a leak check
/// for tests that still works while other tests use libvips at the same time.
static inline int i2v_live_image_count(int width, int height) {
    I2VImageCount query = { width, height, 0 };
    vips_object_map((VipsSListMap2Fn)i2v_count_image, &query, NULL);
    return query.count;
}

#endif
