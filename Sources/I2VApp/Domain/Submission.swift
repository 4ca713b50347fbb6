import ImageIntake

/// Wan's recommended negative prompt, the reference service's default.
let defaultNegativePrompt =
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, poorly drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still picture, messy background, three legs, many people in the background, walking backwards"

/// What a client asks to be made, whichever API it came through, once validated.
struct Submission: Sendable, Equatable {
    /// Where the image comes from: a URL the service downloads, or bytes the request carried.
    enum Image: Sendable, Equatable {
        case url(String)
        case bytes([UInt8])
    }

    var image: Image
    var prompt: String
    var model: String
    var imageSize: ImageSizeRequest
    var numFrames: Int
    var guidanceScale: Double
    var inferSteps: Int
    /// nil: a random seed, reported back with the result.
    var seed: Int?
    var negativePrompt: String
    /// Where to deliver the task's events; nil: no webhook.
    var webhook: WebhookSubscription? = nil

    /// The frame count Wan makes for a request: `num_frames // 4 * 4 + 1`.
    var effectiveFrames: Int { numFrames / 4 * 4 + 1 }
}
