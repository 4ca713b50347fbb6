import ImageIntake

/// Wan's recommended negative prompt, the reference service's default.
package let defaultNegativePrompt =
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, poorly drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still picture, messy background, three legs, many people in the background, walking backwards"

/// What a client asks to be made, whichever API it came through, once validated.
package struct Submission: Sendable, Equatable {
    /// Where the image comes from: a URL the service downloads, or bytes the request carried.
    package enum Image: Sendable, Equatable {
        case url(String)
        case bytes([UInt8])
    }

    package var image: Image
    package var prompt: String
    package var model: String
    package var imageSize: ImageSizeRequest
    package var numFrames: Int
    package var guidanceScale: Double
    /// The low-noise expert's guidance, for a model with two experts; nil: `guidanceScale` for both.
    package var guidanceScale2: Double? = nil
    package var inferSteps: Int
    /// nil: a random seed, reported back with the result.
    package var seed: Int?
    package var negativePrompt: String
    /// Where to deliver the task's events; nil: no webhook.
    package var webhook: WebhookSubscription? = nil
    /// The frame the video ends on, for a model that takes one; prepared to the first frame's size.
    package var lastImage: Image? = nil
    /// LoRAs from the catalog, applied in this order's set; empty: the base model alone.
    package var loras: [LoRAChoice] = []

    /// The frame count Wan makes for a request: `num_frames // 4 * 4 + 1`.
    package var effectiveFrames: Int { numFrames / 4 * 4 + 1 }

    package init(
        image: Image, prompt: String, model: String, imageSize: ImageSizeRequest, numFrames: Int, guidanceScale: Double, inferSteps: Int, seed: Int? = nil,
        negativePrompt: String, webhook: WebhookSubscription? = nil
    ) {
        self.image = image
        self.prompt = prompt
        self.model = model
        self.imageSize = imageSize
        self.numFrames = numFrames
        self.guidanceScale = guidanceScale
        self.inferSteps = inferSteps
        self.seed = seed
        self.negativePrompt = negativePrompt
        self.webhook = webhook
    }
}
