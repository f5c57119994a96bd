//! Reading a property set: the length, each identifier against the packet's
//! allowlist, duplicates (only User Property and, to a client, Subscription
//! Identifier may repeat) and each value's range.

use super::*;
use crate::topic;

/// Reads a property length and the properties it covers.
pub(crate) fn decode(reader: &mut Reader, context: Context) -> Result<Properties, DecodeError> {
    let len = reader.varint()?;
    if len == 0 {
        // Nearly every packet: no properties, nothing to check.
        return Ok(Properties::default());
    }
    let mut body = Reader::new(reader.take(len as usize)?);
    let mut props = Properties::default();
    // One bit per identifier seen; every identifier is below 64.
    let mut seen: u64 = 0;
    let mut user_property_bytes = 0usize;
    while !body.is_empty() {
        let raw_id = body.varint()?;
        let id = u8::try_from(raw_id).map_err(|_| DecodeError::UnknownProperty(raw_id))?;
        if !is_known(id) {
            return Err(DecodeError::UnknownProperty(raw_id));
        }
        if !context.allows(id) {
            return Err(DecodeError::PropertyNotAllowed {
                id,
                packet: context.name(),
            });
        }
        let repeatable = id == USER_PROPERTY
            || (id == SUBSCRIPTION_IDENTIFIER && context == Context::Publish { to_client: true });
        if seen & (1 << id) != 0 && !repeatable {
            return Err(DecodeError::DuplicateProperty(id));
        }
        seen |= 1 << id;
        match id {
            PAYLOAD_FORMAT_INDICATOR => props.payload_format_indicator = Some(flag(&mut body, id)?),
            MESSAGE_EXPIRY_INTERVAL => props.message_expiry_interval = Some(body.u32()?),
            CONTENT_TYPE => props.content_type = Some(body.string()?),
            RESPONSE_TOPIC => {
                let response_topic = body.string()?;
                topic::validate_topic_name(&response_topic)
                    .map_err(DecodeError::InvalidTopicName)?;
                props.response_topic = Some(response_topic);
            }
            CORRELATION_DATA => props.correlation_data = Some(body.binary()?),
            SUBSCRIPTION_IDENTIFIER => {
                // Zero is a Protocol Error (§3.8.2.1.2); the varint caps the maximum.
                let value = body.varint()?;
                if value == 0 {
                    return Err(DecodeError::InvalidPropertyValue(id));
                }
                props.subscription_identifiers.push(value);
            }
            SESSION_EXPIRY_INTERVAL => props.session_expiry_interval = Some(body.u32()?),
            ASSIGNED_CLIENT_IDENTIFIER => props.assigned_client_identifier = Some(body.string()?),
            SERVER_KEEP_ALIVE => props.server_keep_alive = Some(body.u16()?),
            AUTHENTICATION_METHOD => props.authentication_method = Some(body.string()?),
            AUTHENTICATION_DATA => props.authentication_data = Some(body.binary()?),
            REQUEST_PROBLEM_INFORMATION => {
                props.request_problem_information = Some(flag(&mut body, id)?)
            }
            WILL_DELAY_INTERVAL => props.will_delay_interval = Some(body.u32()?),
            REQUEST_RESPONSE_INFORMATION => {
                props.request_response_information = Some(flag(&mut body, id)?)
            }
            RESPONSE_INFORMATION => props.response_information = Some(body.string()?),
            SERVER_REFERENCE => props.server_reference = Some(body.string()?),
            REASON_STRING => props.reason_string = Some(body.string()?),
            RECEIVE_MAXIMUM => props.receive_maximum = Some(non_zero_u16(&mut body, id)?),
            TOPIC_ALIAS_MAXIMUM => props.topic_alias_maximum = Some(body.u16()?),
            TOPIC_ALIAS => {
                let alias = body.u16()?;
                if alias == 0 {
                    return Err(DecodeError::TopicAliasZero);
                }
                props.topic_alias = Some(alias);
            }
            MAXIMUM_QOS => props.maximum_qos = Some(flag(&mut body, id)?),
            RETAIN_AVAILABLE => props.retain_available = Some(flag(&mut body, id)?),
            USER_PROPERTY => {
                let name = body.string()?;
                let value = body.string()?;
                user_property_bytes += name.len() + value.len();
                if props.user_properties.len() >= MAX_USER_PROPERTIES
                    || user_property_bytes > MAX_USER_PROPERTY_BYTES
                {
                    return Err(DecodeError::TooManyUserProperties {
                        max: MAX_USER_PROPERTIES,
                        max_bytes: MAX_USER_PROPERTY_BYTES,
                    });
                }
                props.user_properties.push((name, value));
            }
            MAXIMUM_PACKET_SIZE => {
                let max = body.u32()?;
                if max == 0 {
                    return Err(DecodeError::InvalidPropertyValue(id));
                }
                props.maximum_packet_size = Some(max);
            }
            WILDCARD_SUBSCRIPTION_AVAILABLE => {
                props.wildcard_subscription_available = Some(flag(&mut body, id)?)
            }
            SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                props.subscription_identifiers_available = Some(flag(&mut body, id)?)
            }
            SHARED_SUBSCRIPTION_AVAILABLE => {
                props.shared_subscription_available = Some(flag(&mut body, id)?)
            }
            _ => return Err(DecodeError::UnknownProperty(raw_id)),
        }
    }
    // §3.1.2.11.10, §3.2.2.3.18, §3.15.2.2.4.
    if props.authentication_data.is_some() && props.authentication_method.is_none() {
        return Err(DecodeError::AuthDataWithoutMethod);
    }
    Ok(props)
}

fn is_known(id: u8) -> bool {
    matches!(
        id,
        0x01..=0x03
            | 0x08
            | 0x09
            | 0x0B
            | 0x11..=0x13
            | 0x15..=0x1A
            | 0x1C
            | 0x1F
            | 0x21..=0x2A
    )
}

/// A byte property that may only be 0 or 1.
fn flag(body: &mut Reader, id: u8) -> Result<u8, DecodeError> {
    match body.u8()? {
        value @ (0 | 1) => Ok(value),
        _ => Err(DecodeError::InvalidPropertyValue(id)),
    }
}

fn non_zero_u16(body: &mut Reader, id: u8) -> Result<u16, DecodeError> {
    match body.u16()? {
        0 => Err(DecodeError::InvalidPropertyValue(id)),
        value => Ok(value),
    }
}
