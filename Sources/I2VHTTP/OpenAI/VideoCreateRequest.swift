import Foundation
import HTTPTypes
import I2VCore
import I2VGPUNode
import ImageIntake

/// `POST /v1/videos`, in OpenAI's terms, taken to the same `Submission` the seed's submit makes. The
/// fields' rules are the seed's (the same `FieldReader`), under OpenAI's names; every problem is a 400.
package enum VideoCreateRequest {
    /// Where the image came from, before validation.
    package enum ImageField: Sendable, Equatable {
        /// `input_reference` as an uploaded file, already read under the byte cap.
        case upload([UInt8])
        /// `input_reference.image_url` (JSON) or `input_reference[image_url]` (multipart).
        case url(JSONValue)
        /// `input_reference.file_id`: OpenAI's own file store, which this service does not have.
        case fileID
    }

    package static let sizes: [String: ImageSizeRequest] = SubmitRequest.imageSizes

    /// Multipart fields arrive as text; these are read as the numbers they stand for.
    package static let numericFields: Set<String> = ["seconds", "num_frames", "guidance_scale", "guidance_scale_2", "num_inference_steps", "seed"]

    package struct Models: Sendable {
        package var ids: [String]
        package var defaultModel: String
        /// Frames per second of each served model, for `seconds`.
        package var fps: [String: Int]
        /// What is known of the served models: their sizes and whether they take a last frame.
        package var served: [ServedModel]
        /// The names in the LoRA catalog.
        package var loras: Set<String>
        /// Whether a LoRA may be given by URL (`I2V_LORA_URLS`).
        package var loraURLs: Bool

        package init(
            ids: [String], defaultModel: String, fps: [String: Int], served: [ServedModel] = [], loras: Set<String> = [], loraURLs: Bool = false
        ) {
            self.loras = loras
            self.loraURLs = loraURLs
            self.ids = ids
            self.defaultModel = defaultModel
            self.fps = fps
            self.served = served
        }
    }

    /// The JSON form: `input_reference` is an object with `image_url` (or `file_id`).
    package static func validate(json body: JSONValue, models: Models) throws(OpenAIError) -> Submission {
        guard case .object(var fields) = body else {
            throw OpenAIError(.badRequest, "the body must be a JSON object", code: "invalid_json")
        }
        var image: ImageField?
        switch fields.removeValue(forKey: "input_reference") {
        case .object(let reference)?:
            if let url = reference["image_url"] {
                image = .url(url)
            } else if reference["file_id"] != nil {
                image = .fileID
            }
        case .string(let url)?:
            // A bare URL where the object was expected: what it means is not in doubt.
            image = .url(.string(url))
        case let other?:
            throw OpenAIError(
                .badRequest,
                "input_reference must be an object such as {\"image_url\": \"https://…\"}, not \(other.kind)",
                param: "input_reference",
                code: "invalid_type"
            )
        case nil:
            break
        }
        // The last frame, this API's extension: `last_image` as `{"image_url": …}` or the URL itself.
        var lastImage: ImageField?
        switch fields.removeValue(forKey: "last_image") {
        case .object(let reference)?:
            lastImage = reference["image_url"].map { .url($0) }
            if lastImage == nil {
                throw OpenAIError(.badRequest, "last_image must be {\"image_url\": \"https://…\"}", param: "last_image", code: "invalid_type")
            }
        case .string(let url)?:
            lastImage = .url(.string(url))
        case .null?, nil:
            break
        case let other?:
            throw OpenAIError(
                .badRequest, "last_image must be an object such as {\"image_url\": \"https://…\"}, not \(other.kind)", param: "last_image",
                code: "invalid_type"
            )
        }
        return try validate(fields: fields, image: image, lastImage: lastImage, models: models)
    }

    /// The multipart form: text fields, and the image as a file part or as `input_reference[image_url]`.
    package static func validate(form: VideoForm, models: Models) throws(OpenAIError) -> Submission {
        var fields: [String: JSONValue] = [:]
        for (name, text) in form.fields {
            fields[name] = numericFields.contains(name) ? number(text) : .string(text)
        }
        if let loras = try loras(in: form) { fields["loras"] = loras }
        var image: ImageField?
        if let bytes = form.imageBytes {
            image = .upload(bytes)
        } else if let url = fields.removeValue(forKey: "input_reference[image_url]") {
            image = .url(url)
        } else if fields["input_reference[file_id]"] != nil {
            image = .fileID
        }
        var lastImage: ImageField?
        if let bytes = form.lastImageBytes {
            lastImage = .upload(bytes)
        } else if let url = fields.removeValue(forKey: "last_image[image_url]") {
            lastImage = .url(url)
        }
        return try validate(fields: fields, image: image, lastImage: lastImage, models: models)
    }

    /// A form's `loras`: one field holding the JSON list, or the list as the SDKs flatten a list of objects in
    /// a form (`loras[][name]`, `loras[][scale]`, `loras[][expert]`, …, or numbered `loras[0][name]`), put back
    /// together so it is checked like the JSON field and never dropped. nil when the form names none.
    package static func loras(in form: VideoForm) throws(OpenAIError) -> JSONValue? {
        if let text = form.fields["loras"] {
            guard form.loraFields.isEmpty else {
                throw OpenAIError(
                    .badRequest, "give loras either as one JSON field or as loras[][name] fields, not both", param: "loras", code: "invalid_value")
            }
            do {
                return try JSONValue.parse(Array(text.utf8))
            } catch {
                throw OpenAIError(
                    .badRequest, "loras must be a JSON list such as [{\"name\": \"style\", \"scale\": 0.8}]", param: "loras",
                    code: "invalid_json"
                )
            }
        }
        guard !form.loraFields.isEmpty else { return nil }
        var numbered: [Int: [String: JSONValue]] = [:]
        var ordered: [[String: JSONValue]] = []
        var seen: [String: Int] = [:]
        for field in form.loraFields {
            // loras[<index or nothing>][name|url|scale|expert]
            let parts = field.name.dropFirst("loras[".count).split(separator: "]", omittingEmptySubsequences: false)
            guard parts.count == 3, parts[2].isEmpty, parts[1].hasPrefix("["), case let key = String(parts[1].dropFirst()),
                ["name", "url", "scale", "expert"].contains(key),
                parts[0].isEmpty || Int(parts[0]).map({ (0..<100).contains($0) }) == true
            else {
                throw OpenAIError(
                    .badRequest, "unknown form field \(field.name): a LoRA is loras[][name] (or loras[][url]), loras[][scale] and loras[][expert]",
                    param: "loras",
                    code: "invalid_value"
                )
            }
            let value = key == "scale" ? number(field.value) : .string(field.value)
            if let index = Int(parts[0]) {
                numbered[index, default: [:]][key] = value
            } else {
                // The n-th `loras[][name]` is the n-th LoRA's, whether the fields come LoRA by LoRA or, as the
                // OpenAI SDK sends them, key by key. A LoRA left without a scale (or an expert: `both` says it)
                // is thus only safe last. A name and a url each start a LoRA, so they count as one key.
                let counted = key == "url" ? "name" : key
                let index = seen[counted, default: 0]
                seen[counted] = index + 1
                if index == ordered.count { ordered.append([:]) }
                ordered[index][key] = value
            }
        }
        guard numbered.isEmpty || ordered.isEmpty else {
            throw OpenAIError(.badRequest, "loras[][…] and numbered loras[i][…] fields cannot be mixed", param: "loras", code: "invalid_value")
        }
        let indices = numbered.keys.sorted()
        guard indices == Array(0..<indices.count) else {
            throw OpenAIError(.badRequest, "loras[i] fields must number the LoRAs from 0 without gaps", param: "loras", code: "invalid_value")
        }
        return .array(ordered.isEmpty ? indices.map { .object(numbered[$0] ?? [:]) } : ordered.map { .object($0) })
    }

    /// A form field as the JSON number it spells, or the text itself (reported as the wrong type).
    private static func number(_ text: String) -> JSONValue {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        if let integer = Int(trimmed) { return .integer(integer) }
        if let double = Double(trimmed), trimmed.rangeOfCharacter(from: .letters) == nil { return .number(double) }
        if trimmed == "null" { return .null }
        return .string(text)
    }

    private static func validate(
        fields: [String: JSONValue], image: ImageField?, lastImage: ImageField?, models: Models
    ) throws(OpenAIError) -> Submission {
        let source: Submission.Image
        switch image {
        case .upload(let bytes):
            source = .bytes(bytes)
        case .url(let value):
            source = .url(try imageURL(value))
        case .fileID:
            throw OpenAIError(
                .badRequest,
                "input_reference.file_id is not supported: upload the image as input_reference, or give input_reference.image_url",
                param: "input_reference",
                code: "unsupported_parameter"
            )
        case nil:
            throw OpenAIError(
                .badRequest,
                "an input image is required: upload it as the input_reference file, or give input_reference.image_url",
                param: "input_reference",
                code: "missing_required_parameter"
            )
        }

        var reader = FieldReader(fields: fields)
        let prompt = reader.string("prompt", minLength: 10, maxLength: 500, default: nil)
        let model = reader.choice("model", among: models.ids, default: models.defaultModel)
        let facts = model.flatMap { id in models.served.first { $0.id.lowercased() == id.lowercased() } }
        let size = reader.size("size", for: facts)
        var last: Submission.Image?
        switch lastImage {
        case .upload(let bytes)?: last = .bytes(bytes)
        case .url(let value)?: last = .url(try imageURL(value, param: "last_image.image_url"))
        case .fileID?, nil: break
        }
        if let facts {
            if last != nil, facts.lastImage == .none {
                throw OpenAIError(
                    .badRequest, "\(facts.id) makes a video from a first frame only; it cannot end on a given image", param: "last_image",
                    code: "unsupported_parameter"
                )
            }
            if last == nil, facts.lastImage == .required {
                throw OpenAIError(
                    .badRequest, "\(facts.id) makes a video from a first and a last frame: give last_image", param: "last_image",
                    code: "missing_required_parameter"
                )
            }
        }
        let guidance = reader.number("guidance_scale", in: 1.0...20.0, default: 3.0)
        let guidance2 = reader.optionalNumber("guidance_scale_2", in: 1.0...20.0)
        if guidance2 != nil, let facts, facts.experts < 2 {
            throw OpenAIError(
                .badRequest, "\(facts.id) has one transformer; guidance_scale_2 is for a model with two experts", param: "guidance_scale_2",
                code: "unsupported_parameter"
            )
        }
        let steps = reader.integer("num_inference_steps", in: 20...100, default: 30)
        let seed = reader.optionalInteger("seed", in: 0...2_147_483_647)
        let negative = reader.string("negative_prompt", minLength: 0, maxLength: 500, default: defaultNegativePrompt)
        let frames: Int?
        if fields["num_frames"] != nil {
            frames = reader.integer("num_frames", in: 24...120, default: 81)
        } else if let seconds = fields["seconds"] {
            frames = Self.frames(seconds: seconds, fps: model.flatMap { models.fps[$0] } ?? 16, issues: &reader.issues)
        } else {
            frames = 81
        }
        let webhook = reader.webhook()
        let loras = reader.loras(available: models.loras, urls: models.loraURLs, model: facts)
        guard reader.issues.isEmpty, let prompt, let model, let size, let frames, let guidance, let steps, let negative, let loras else {
            throw OpenAIError.invalidRequest(reader.issues)
        }
        if let facts, let most = facts.maxFrames, frames / 4 * 4 + 1 > most {
            throw OpenAIError(
                .badRequest, "\(facts.id) makes at most \(most) frames; \(frames) frames asked for make \(frames / 4 * 4 + 1)",
                param: fields["num_frames"] != nil ? "num_frames" : "seconds", code: "invalid_value"
            )
        }
        var submission = Submission(
            image: source,
            prompt: prompt,
            model: model,
            imageSize: size,
            numFrames: frames,
            guidanceScale: guidance,
            inferSteps: steps,
            seed: seed ?? nil,
            negativePrompt: negative,
            webhook: webhook
        )
        submission.lastImage = last
        submission.loras = loras
        submission.guidanceScale2 = guidance2
        return submission
    }

    /// `seconds`, a string or a number, as the requested frame count `round(seconds × fps)`, which must
    /// fall in the seed's 24–120 (the model then makes `frames // 4 * 4 + 1`).
    private static func frames(seconds value: JSONValue, fps: Int, issues: inout [ValidationIssue]) -> Int? {
        let seconds: Double? =
            switch value {
            case .integer(let integer): Double(integer)
            case .number(let number): number
            case .string(let text): Double(text.trimmingCharacters(in: .whitespaces))
            default: nil
            }
        let shortest = 24.0 / Double(fps), longest = 120.0 / Double(fps)
        let range = "\(format(shortest))–\(format(longest)) s at \(fps) fps (24–120 frames)"
        guard let seconds, seconds.isFinite else {
            issues.append(ValidationIssue("float_parsing", field: "seconds", "Input should be a number of seconds, \(range)", input: value))
            return nil
        }
        let frames = (seconds * Double(fps)).rounded()
        guard (24...120).contains(frames) else {
            issues.append(
                ValidationIssue("out_of_range", field: "seconds", "Input should be \(range); \(format(seconds)) s is \(format(frames)) frames", input: value))
            return nil
        }
        return Int(frames)
    }

    private static func format(_ value: Double) -> String {
        value.rounded() == value && abs(value) < 1e15 ? String(Int(value)) : String(format: "%.2f", value)
    }

    /// An http(s) URL (downloaded with the SSRF checks) or a `data:image/…;base64,…` URL (decoded under
    /// the byte cap); both go to the intake as they are.
    private static func imageURL(_ value: JSONValue, param: String = "input_reference.image_url") throws(OpenAIError) -> String {
        guard case .string(let url) = value else {
            throw OpenAIError(.badRequest, "\(param) must be a string", param: param, code: "invalid_type")
        }
        if url.prefix(5).lowercased() == "data:" { return url }
        var reader = FieldReader(fields: ["image_url": value])
        guard let checked = reader.url("image_url"), reader.issues.isEmpty else {
            let reason = reader.issues.first?.msg ?? "Input should be a valid URL"
            throw OpenAIError(.badRequest, "\(param): \(reason) (or a data:image/…;base64,… URL)", param: param, code: reader.issues.first?.type)
        }
        return checked
    }
}

extension JSONValue {
    /// What kind of JSON value this is, for messages.
    package var kind: String {
        switch self {
        case .null: "null"
        case .bool: "a boolean"
        case .integer, .number: "a number"
        case .string: "a string"
        case .array: "an array"
        case .object: "an object"
        }
    }
}
