/** The public surface of Updraft: the engine, its options and events, and the error catalogue. */
export { createUploadEngine, UploadEngine } from './main/engine.js';
export type { ListenInfo } from './main/engine.js';
export { resolveOptions, OptionsError, STAGING_DIR_NAME } from './main/options.js';
export { RootInUseError } from './main/root-guard.js';
export type { UploadEngineOptions, AuthRequest, Durability, ConflictPolicy, LogLevel } from './main/options.js';
export type { UploadEvents, UploadInfo } from './main/upload-registry.js';
export type { CompletionInfo, StatusData } from './main/upload.js';
export { UploadError, ERRORS, ERROR_CODES, isUploadError } from './protocol/errors.js';
export type { ErrorCode, Envelope } from './protocol/errors.js';
