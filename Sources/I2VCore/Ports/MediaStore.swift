import Foundation

/// The files of tasks: each task's prepared input image and each finished video, named by key under one
/// storage root. Everything that writes, locates or deletes such a file goes through here, so a shared
/// root (several nodes on one filesystem) needs changes in this one place only.
public struct MediaStore: Sendable {
    public let inputsDirectory: URL
    public let videosDirectory: URL

    public init(inputsDirectory: URL, videosDirectory: URL) {
        self.inputsDirectory = inputsDirectory
        self.videosDirectory = videosDirectory
    }

    public func createDirectories() throws {
        for directory in [inputsDirectory, videosDirectory] {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        }
    }

    /// The key a task's prepared input is stored under.
    public static func inputKey(taskID: String) -> String { "\(taskID).png" }

    /// The key of a task's last frame, which belongs to its input: it is written beside it and removed
    /// with it, so every path that removes an input removes both.
    public static func lastInputKey(inputKey: String) -> String {
        (inputKey.hasSuffix(".png") ? String(inputKey.dropLast(4)) : inputKey) + "-last.png"
    }

    /// Where the input stored under `key` lives on this node.
    public func inputURL(key: String) -> URL {
        inputsDirectory.appending(path: key)
    }

    /// Where a video lives; `name` is the random name the video is published under.
    public func videoURL(name: String) -> URL {
        videosDirectory.appending(path: "\(name).mp4")
    }

    /// Writes a task's input in one step (a reader never sees half a file) and returns its key.
    public func writeInput(_ bytes: [UInt8], taskID: String) throws -> String {
        let key = Self.inputKey(taskID: taskID)
        try FileManager.default.createDirectory(at: inputsDirectory, withIntermediateDirectories: true)
        try Data(bytes).write(to: inputURL(key: key), options: .atomic)
        return key
    }

    /// Writes a task's last frame beside its input and returns its key.
    public func writeLastInput(_ bytes: [UInt8], taskID: String) throws -> String {
        let key = Self.lastInputKey(inputKey: Self.inputKey(taskID: taskID))
        try FileManager.default.createDirectory(at: inputsDirectory, withIntermediateDirectories: true)
        try Data(bytes).write(to: inputURL(key: key), options: .atomic)
        return key
    }

    /// Deletes a file if it is there. Several nodes may sweep the same root, so "already gone" is success.
    public func remove(_ url: URL) {
        try? FileManager.default.removeItem(at: url)
    }

    /// Removes an input and its last frame, if it has one.
    public func removeInput(key: String) {
        remove(inputURL(key: key))
        remove(inputURL(key: Self.lastInputKey(inputKey: key)))
    }

    public func removeVideo(name: String) {
        remove(videoURL(name: name))
    }

    /// Files under the root that no name in `referenced` accounts for and that were last modified before
    /// `cutoff` (younger ones may still be being written by a submit or an encode).
    public func unreferencedFiles(referenced: Set<String>, modifiedBefore cutoff: Date) -> [URL] {
        [inputsDirectory, videosDirectory].flatMap { directory -> [URL] in
            let files =
                (try? FileManager.default.contentsOfDirectory(
                    at: directory,
                    includingPropertiesForKeys: [.contentModificationDateKey],
                    options: [.skipsSubdirectoryDescendants]
                )) ?? []
            return files.filter { file in
                guard !referenced.contains(file.lastPathComponent) else { return false }
                let modified = (try? file.resourceValues(forKeys: [.contentModificationDateKey]).contentModificationDate) ?? cutoff
                return modified < cutoff
            }
        }
    }
}
