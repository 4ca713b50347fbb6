import Foundation
import I2VCore
import I2VGPUNode
import ImageIntake

/// The seed API's `/video/submit` body and its validation, in the reference FastAPI service's terms: every
/// rule on both sides of its bound, lengths in Unicode scalars (as Python counts them), types and `null` told
/// apart, unknown fields ignored.
package enum SubmitRequest {
    package static let imageSizes: [String: ImageSizeRequest] = [
        "auto": .auto,
        "480x832": .fixed(width: 480, height: 832),
        "832x480": .fixed(width: 832, height: 480),
    ]

    /// `served` holds what is known of the models (their sizes, longest clip, last-frame support): a field
    /// the chosen model cannot use is refused here, naming the model and what it takes. `loras` are the names
    /// in the LoRA catalog; `loraURLs` whether a LoRA may be given by URL instead.
    package static func validate(
        _ body: JSONValue, modelIDs: [String], defaultModel: String, served: [ServedModel] = [], loras available: Set<String> = [],
        loraURLs: Bool = false
    ) throws(RequestValidationError) -> Submission {
        guard case .object(let fields) = body else {
            throw RequestValidationError(issues: [
                ValidationIssue("model_attributes_type", field: nil, "Input should be a valid dictionary or object to extract fields from", input: body)
            ])
        }
        var reader = FieldReader(fields: fields)
        let imageURL = reader.url("image_url")
        let prompt = reader.string("prompt", minLength: 10, maxLength: 500, default: nil)
        let model = reader.choice("model", among: modelIDs, default: defaultModel)
        let facts = model.flatMap { id in served.first { $0.id.lowercased() == id.lowercased() } }
        let size = reader.size("image_size", for: facts)
        var numFrames = reader.integer("num_frames", in: 24...120, default: 81)
        if let frames = numFrames, let facts, let most = facts.maxFrames, frames / 4 * 4 + 1 > most {
            // The largest num_frames whose 4k+1 frames the model still makes.
            let largest = (most - 1) / 4 * 4 + 3
            reader.issues.append(
                ValidationIssue(
                    "less_than_equal", field: "num_frames",
                    "Input should be less than or equal to \(largest) for \(facts.id), which makes at most \(most) frames",
                    input: .integer(frames)
                ))
            numFrames = nil
        }
        let lastImageURL = reader.optionalURL("last_image_url")
        if let facts {
            if lastImageURL != nil, facts.lastImage == .none {
                reader.issues.append(
                    ValidationIssue(
                        "value_error", field: "last_image_url", "\(facts.id) makes a video from a first frame only; it cannot end on a given image",
                        input: fields["last_image_url"]
                    ))
            } else if lastImageURL == nil, facts.lastImage == .required, fields["last_image_url"] == nil {
                reader.issues.append(
                    ValidationIssue("missing", field: "last_image_url", "Field required: \(facts.id) makes a video from a first and a last frame", input: nil))
            }
        }
        let guidance = reader.number("guidance_scale", in: 1.0...20.0, default: 3.0)
        let guidance2 = reader.optionalNumber("guidance_scale_2", in: 1.0...20.0)
        if guidance2 != nil, let facts, facts.experts < 2 {
            reader.issues.append(
                ValidationIssue(
                    "value_error", field: "guidance_scale_2", "\(facts.id) has one transformer; guidance_scale_2 is for a model with two experts",
                    input: fields["guidance_scale_2"]
                ))
        }
        let steps = reader.integer("infer_steps", in: 20...100, default: 30)
        let seed = reader.optionalInteger("seed", in: 0...2_147_483_647)
        let negative = reader.string("negative_prompt", minLength: 0, maxLength: 500, default: defaultNegativePrompt)
        let webhook = reader.webhook()
        let loras = reader.loras(available: available, urls: loraURLs, model: facts)
        guard reader.issues.isEmpty, let imageURL, let prompt, let model, let size, let numFrames, let guidance, let steps, let negative,
            let loras
        else {
            throw RequestValidationError(issues: reader.issues)
        }
        var submission = Submission(
            image: .url(imageURL),
            prompt: prompt,
            model: model,
            imageSize: size,
            numFrames: numFrames,
            guidanceScale: guidance,
            inferSteps: steps,
            seed: seed ?? nil,
            negativePrompt: negative,
            webhook: webhook
        )
        submission.lastImage = lastImageURL.map { .url($0) }
        submission.loras = loras
        submission.guidanceScale2 = guidance2
        return submission
    }

    /// The `image_size` values a model takes: `auto`, the two the service has always taken, and the sizes
    /// the model was trained at.
    static func sizes(for model: ServedModel?) -> [(name: String, size: ImageSizeRequest)] {
        var sizes: [(name: String, size: ImageSizeRequest)] = [
            ("auto", .auto), ("480x832", .fixed(width: 480, height: 832)), ("832x480", .fixed(width: 832, height: 480)),
        ]
        for frame in model?.frameSizes ?? [] where !sizes.contains(where: { $0.name == "\(frame.width)x\(frame.height)" }) {
            sizes.append(("\(frame.width)x\(frame.height)", .fixed(width: frame.width, height: frame.height)))
        }
        return sizes
    }

    /// The `requestId` body of `/video/status` and `/video/cancel`: a string of exactly 32 characters.
    package static func requestID(_ body: JSONValue) throws(RequestValidationError) -> String {
        guard case .object(let fields) = body else {
            throw RequestValidationError(issues: [
                ValidationIssue("model_attributes_type", field: nil, "Input should be a valid dictionary or object to extract fields from", input: body)
            ])
        }
        var reader = FieldReader(fields: fields)
        guard let id = reader.string("requestId", minLength: 32, maxLength: 32, default: nil), reader.issues.isEmpty else {
            throw RequestValidationError(issues: reader.issues)
        }
        return id
    }
}

/// Reads one field at a time, collecting every problem so a client sees all of them in one answer.
package struct FieldReader {
    package let fields: [String: JSONValue]
    package var issues: [ValidationIssue] = []

    private mutating func missing(_ name: String) {
        issues.append(ValidationIssue("missing", field: name, "Field required", input: nil))
    }

    package mutating func string(_ name: String, minLength: Int?, maxLength: Int?, default defaultValue: String?) -> String? {
        guard let value = fields[name] else {
            if defaultValue == nil { missing(name) }
            return defaultValue
        }
        guard case .string(let string) = value else {
            issues.append(ValidationIssue("string_type", field: name, "Input should be a valid string", input: value))
            return nil
        }
        let length = string.unicodeScalars.count
        if let minLength, length < minLength {
            let unit = minLength == 1 ? "character" : "characters"
            issues.append(ValidationIssue("string_too_short", field: name, "String should have at least \(minLength) \(unit)", input: value))
            return nil
        }
        if let maxLength, length > maxLength {
            let unit = maxLength == 1 ? "character" : "characters"
            issues.append(ValidationIssue("string_too_long", field: name, "String should have at most \(maxLength) \(unit)", input: value))
            return nil
        }
        return string
    }

    /// A size field (`auto` by default): one of the sizes `model` takes, or an issue listing them.
    package mutating func size(_ name: String, for model: ServedModel?) -> ImageSizeRequest? {
        let sizes = SubmitRequest.sizes(for: model)
        return string(name, minLength: nil, maxLength: nil, default: "auto").flatMap { value -> ImageSizeRequest? in
            if let size = sizes.first(where: { $0.name == value })?.size { return size }
            let names = sizes.map { "'\($0.name)'" }
            let listed = names.dropLast().joined(separator: ", ") + " or " + names[names.count - 1]
            let forModel = model.map { " for \($0.id)" } ?? ""
            issues.append(ValidationIssue("literal_error", field: name, "Input should be \(listed)\(forModel)", input: .string(value)))
            return nil
        }
    }

    /// An optional URL: absent or `null` is nil without an issue.
    package mutating func optionalURL(_ name: String) -> String? {
        guard let value = fields[name], value != .null else { return nil }
        return url(name)
    }

    package mutating func url(_ name: String) -> String? {
        guard let string = string(name, minLength: 1, maxLength: 2083, default: nil) else { return nil }
        guard let components = URLComponents(string: string), let scheme = components.scheme?.lowercased() else {
            issues.append(ValidationIssue("url_parsing", field: name, "Input should be a valid URL, relative URL without a base", input: .string(string)))
            return nil
        }
        guard scheme == "http" || scheme == "https" else {
            issues.append(ValidationIssue("url_scheme", field: name, "URL scheme should be 'http' or 'https'", input: .string(string)))
            return nil
        }
        guard let host = components.host, !host.isEmpty else {
            issues.append(ValidationIssue("url_parsing", field: name, "Input should be a valid URL, empty host", input: .string(string)))
            return nil
        }
        return string
    }

    package mutating func choice(_ name: String, among choices: [String], default defaultValue: String) -> String? {
        guard let raw = string(name, minLength: nil, maxLength: nil, default: defaultValue) else { return nil }
        if let match = choices.first(where: { $0.lowercased() == raw.lowercased() }) { return match }
        let listed = choices.map { "'\($0)'" }.joined(separator: ", ")
        issues.append(ValidationIssue("enum", field: name, "Input should be one of the models: \(listed)", input: .string(raw)))
        return nil
    }

    private mutating func numeric(_ name: String, _ value: JSONValue, integer: Bool) -> Double? {
        switch value {
        case .integer(let int):
            return Double(int)
        case .number(let double) where !integer:
            return double
        case .number(let double) where !double.isFinite:
            // An integer literal too big for a double (1e400) overflows to infinity on parsing.
            issues.append(ValidationIssue("finite_number", field: name, "Input should be a finite number", input: value))
            return nil
        case .number(let double) where double.rounded() == double:
            // Whole, of any size: the bounds check then names the limit it is beyond.
            return double
        case .number:
            issues.append(ValidationIssue("int_from_float", field: name, "Input should be a valid integer, got a number with a fractional part", input: value))
            return nil
        default:
            let message = integer ? "Input should be a valid integer" : "Input should be a valid number"
            issues.append(ValidationIssue(integer ? "int_type" : "float_type", field: name, message, input: value))
            return nil
        }
    }

    private mutating func bounded(_ name: String, _ number: Double, _ range: ClosedRange<Double>, _ input: JSONValue, format: (Double) -> String) -> Bool {
        if number < range.lowerBound {
            issues.append(
                ValidationIssue("greater_than_equal", field: name, "Input should be greater than or equal to \(format(range.lowerBound))", input: input))
            return false
        }
        if number > range.upperBound {
            issues.append(ValidationIssue("less_than_equal", field: name, "Input should be less than or equal to \(format(range.upperBound))", input: input))
            return false
        }
        return true
    }

    package mutating func integer(_ name: String, in range: ClosedRange<Int>, default defaultValue: Int) -> Int? {
        guard let value = fields[name] else { return defaultValue }
        guard let number = numeric(name, value, integer: true) else { return nil }
        let ok = bounded(name, number, Double(range.lowerBound)...Double(range.upperBound), value) { String(Int($0)) }
        return ok ? Int(number) : nil
    }

    /// `seed` is the one field where `null` means "not given": the reference service declares it Optional.
    package mutating func optionalInteger(_ name: String, in range: ClosedRange<Int>) -> Int?? {
        guard let value = fields[name], value != .null else { return .some(nil) }
        guard let number = numeric(name, value, integer: true) else { return nil }
        let ok = bounded(name, number, Double(range.lowerBound)...Double(range.upperBound), value) { String(Int($0)) }
        return ok ? .some(Int(number)) : nil
    }

    /// An optional number: absent or `null` is nil without an issue.
    package mutating func optionalNumber(_ name: String, in range: ClosedRange<Double>) -> Double? {
        guard let value = fields[name], value != .null else { return nil }
        return number(name, in: range, default: range.lowerBound)
    }

    package mutating func number(_ name: String, in range: ClosedRange<Double>, default defaultValue: Double) -> Double? {
        guard let value = fields[name] else { return defaultValue }
        // ±infinity (an overflowed literal) is simply beyond the bounds, as pydantic reports it.
        guard let number = numeric(name, value, integer: false) else { return nil }
        return bounded(name, number, range, value) { String($0) } ? number : nil
    }

    package init(fields: [String: JSONValue], issues: [ValidationIssue] = []) {
        self.fields = fields
        self.issues = issues
    }
}
