/**
 * The public protocol surface: the error catalogue, the wire message types, the codecs and the validators.
 * Pure (no `node:*`): the browser client and the server import the same file.
 */

export * from './errors.js';
export * from './messages.js';
export * from './codec.js';
export * from './validate.js';
