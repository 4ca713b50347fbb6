/// The `image_size` of a submit request.
public enum ImageSizeRequest: Sendable, Equatable, Hashable {
    /// Keep the image's aspect ratio at the model's native area.
    case auto
    /// Exactly this frame; the image is scaled to cover it and centre-cropped.
    case fixed(width: Int, height: Int)
}

/// Picks the video frame size for an image.
///
/// `auto` keeps the aspect ratio of the image (after EXIF orientation) at an area of at most the model's
/// native area `A`, both sides multiples of the model's size multiple `m`, with the very formula of Wan's
/// reference code (`round` is Python's/numpy's round half to even):
///
///     h = floor(round(sqrt(A * H/W)) / m) * m,  w = floor(round(sqrt(A / (H/W))) / m) * m
///
/// so 1920×1080 on the 480P model (A = 399,360, m = 16) gives 832×464. Aspect ratios beyond 1:4 either way
/// are refused for `auto`.
///
/// `fixed` sizes are used as they are, and the aspect check does not apply to them: the caller chose the
/// frame, the model is known to work at it, and the image is scaled to cover it and centre-cropped, so a
/// very wide or tall picture is never distorted, only cropped to the part the user asked for. For `auto`
/// the frame follows the picture, so an extreme picture would make an extreme frame (e.g. 1600×96) that
/// the model was never trained on — that is what the 1:4 limit protects.
public struct ResolutionPlanner: Sendable, Equatable {
    /// The largest frame area for `auto` (399,360 for Wan2.1-I2V-14B-480P).
    public var nativeArea: Int
    /// Both sides are multiples of this (16 for Wan: the VAE's 8× times the transformer's 2× patch).
    public var sizeMultiple: Int
    /// The most extreme aspect ratio accepted by `auto`, as long side / short side.
    public static let maxAspectRatio = 4

    public init(nativeArea: Int, sizeMultiple: Int) {
        precondition(nativeArea > 0, "nativeArea must be positive")
        precondition(sizeMultiple > 0, "sizeMultiple must be positive")
        self.nativeArea = nativeArea
        self.sizeMultiple = sizeMultiple
    }

    /// The frame size for an image of `imageWidth`×`imageHeight` (after EXIF orientation).
    public func plan(
        _ request: ImageSizeRequest,
        imageWidth: Int,
        imageHeight: Int
    ) throws(ImageIntakeError) -> (width: Int, height: Int) {
        guard imageWidth > 0, imageHeight > 0 else {
            throw ImageIntakeError(.notAnImage, "not a decodable image (it has no pixels)")
        }
        switch request {
        case .fixed(let width, let height):
            return (width, height)
        case .auto:
            try Self.checkAspectRatio(width: imageWidth, height: imageHeight)
            let aspect = Double(imageHeight) / Double(imageWidth)
            let area = Double(nativeArea)
            let height = side((area * aspect).squareRoot())
            let width = side((area / aspect).squareRoot())
            return (width, height)
        }
    }

    /// floor(round(x) / m) * m, and at least m (a side never rounds down to zero).
    private func side(_ exact: Double) -> Int {
        let rounded = Int(exact.rounded(.toNearestOrEven))
        return max(sizeMultiple, rounded / sizeMultiple * sizeMultiple)
    }

    static func checkAspectRatio(width: Int, height: Int) throws(ImageIntakeError) {
        let long = max(width, height)
        let short = min(width, height)
        // Integer arithmetic: exactly 1:4 is accepted, anything beyond is refused.
        guard long <= short * maxAspectRatio else {
            let ratio = formatRatio(long: long, short: short)
            let reason =
                width < height
                ? "aspect ratio 1:\(ratio) is beyond 1:\(maxAspectRatio)"
                : "aspect ratio \(ratio):1 is beyond \(maxAspectRatio):1"
            throw ImageIntakeError(.aspectRatio, reason + " (the image is \(width)×\(height))")
        }
    }

    /// long/short as "5" or, when not whole, rounded up to two decimals ("4.01"), so that a refused ratio
    /// never reads as the limit itself.
    private static func formatRatio(long: Int, short: Int) -> String {
        if long % short == 0 {
            return "\(long / short)"
        }
        let hundredths = (long * 100 + short - 1) / short  // ceil(long / short * 100)
        let fraction = hundredths % 100
        return "\(hundredths / 100)." + (fraction < 10 ? "0\(fraction)" : "\(fraction)")
    }
}
