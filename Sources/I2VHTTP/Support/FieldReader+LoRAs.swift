import I2VCore

extension FieldReader {
    /// The LoRA names a `loras` value mentions, so only those are looked up in the catalog (a first look at a
    /// file hashes all of it).
    package static func loraNames(in value: JSONValue?) -> [String] {
        guard case .array(let items)? = value else { return [] }
        return items.prefix(maxLoRAs).compactMap { item in
            guard case .object(let fields) = item, case .string(let name)? = fields["name"] else { return nil }
            return name
        }
    }

    /// At most this many LoRAs per job: the worker's own limit.
    package static let maxLoRAs = 4
    package static let loraScales: ClosedRange<Double> = 0.0...2.0

    /// `loras`: a list of `{"name": …, "scale": …}`, each naming a LoRA of the catalog (`available`) once, with a
    /// scale from 0 to 2 (1 when left out). With `urls` (`I2V_LORA_URLS`) an item may give an http(s) `url`
    /// instead of a `name` (exactly one of them); without, a `url` is an issue at its place. Absent, `null` and
    /// `[]` are no LoRAs. An item's `expert` (`high_noise`, `low_noise`, or `both`, the same as leaving it out)
    /// puts it on one transformer of a model with two (`model`'s `experts`; not checked where the model is not
    /// known here); the
    /// same LoRA twice is then fine on the two single experts. Each problem is an issue at its place in the list
    /// (`loras`, `loras[1].scale`), as pydantic reports nested fields.
    package mutating func loras(available: Set<String>, urls: Bool = false, model: ServedModel? = nil) -> [LoRAChoice]? {
        let name = "loras"
        guard let value = fields[name], value != .null else { return [] }
        guard case .array(let items) = value else {
            issues.append(ValidationIssue("list_type", field: name, "Input should be a valid list of {\"name\": …, \"scale\": …}", input: value))
            return nil
        }
        guard items.count <= Self.maxLoRAs else {
            issues.append(
                ValidationIssue(
                    "too_long", field: name, "List should have at most \(Self.maxLoRAs) items after validation, not \(items.count)", input: value
                ))
            return nil
        }
        var choices: [LoRAChoice] = []
        var valid = true
        for (index, item) in items.enumerated() {
            let place: [ValidationIssue.LocationPart] = [.key(name), .index(index)]
            guard case .object(let fields) = item else {
                issues.append(ValidationIssue("dict_type", loc: place, "Input should be a valid dictionary or object to extract fields from", input: item))
                valid = false
                continue
            }
            var reader = FieldReader(fields: fields)
            let expert = reader.loraExpert(model: model)
            var source: LoRAChoice.Source?
            var loraName: String?
            if let url = fields["url"], url != .null {
                if !urls {
                    reader.issues.append(
                        ValidationIssue(
                            "value_error", field: "url", "LoRAs by URL are off on this server (I2V_LORA_URLS); name a LoRA of the catalog (GET /loras)",
                            input: url
                        ))
                } else if fields["name"] != nil {
                    reader.issues.append(ValidationIssue("value_error", field: "url", "Give a LoRA either a name or a url, not both", input: url))
                } else if let url = reader.url("url") {
                    if choices.contains(where: { $0.source == .url(url) && LoRAExpert.overlap($0.expert, expert ?? nil) }) {
                        reader.issues.append(
                            ValidationIssue(
                                "value_error", field: "url",
                                "LoRA url '\(url)' is given twice; give each LoRA once, or once per expert (high_noise and low_noise)", input: .string(url)))
                    }
                    source = .url(url)
                }
            } else {
                loraName = reader.string("name", minLength: 1, maxLength: nil, default: nil)
                source = loraName.map { .catalog($0) }
            }
            let scale = reader.number("scale", in: Self.loraScales, default: 1.0)
            if let loraName, !available.contains(loraName) {
                // `available` holds only the names this request mentions, so it cannot tell whether the catalog is empty.
                reader.issues.append(
                    ValidationIssue("value_error", field: "name", "Unknown LoRA '\(loraName)': GET /loras lists the catalog", input: .string(loraName)))
            } else if let loraName, choices.contains(where: { $0.name == loraName && LoRAExpert.overlap($0.expert, expert ?? nil) }) {
                reader.issues.append(
                    ValidationIssue(
                        "value_error", field: "name", "LoRA '\(loraName)' is named twice; give each LoRA once, or once per expert (high_noise and low_noise)",
                        input: .string(loraName)))
            }
            // The item's own issues, placed under its index.
            let under: [ValidationIssue.LocationPart] = [.key("body")] + place
            issues += reader.issues.map { issue in
                var nested = issue
                nested.loc = under + Array(issue.loc.dropFirst())
                return nested
            }
            guard reader.issues.isEmpty, let source, let scale, let expert else {
                valid = false
                continue
            }
            choices.append(LoRAChoice(source: source, scale: scale, expert: expert))
        }
        return valid ? choices : nil
    }
}

extension FieldReader {
    /// An item's `expert`: `.some(nil)` for both (absent, `null` or `both`), nil after an issue. Naming one
    /// expert on a model with one transformer is an issue, as `guidance_scale_2` is.
    fileprivate mutating func loraExpert(model: ServedModel?) -> LoRAExpert?? {
        guard let value = fields["expert"], value != .null else { return .some(nil) }
        guard case .string(let text) = value, LoRAExpert.names.contains(text) else {
            issues.append(ValidationIssue("literal_error", field: "expert", "Input should be 'high_noise', 'low_noise' or 'both'", input: value))
            return nil
        }
        let expert = LoRAExpert(rawValue: text)
        if expert != nil, let model, model.experts < 2 {
            issues.append(
                ValidationIssue(
                    "value_error", field: "expert", "\(model.id) has one transformer; a LoRA's expert is for a model with two experts", input: value
                ))
            return nil
        }
        return .some(expert)
    }
}

extension JSONValue {
    /// An object's member; nil for a missing one or a value that is not an object.
    package func member(_ key: String) -> JSONValue? {
        guard case .object(let fields) = self else { return nil }
        return fields[key]
    }
}
