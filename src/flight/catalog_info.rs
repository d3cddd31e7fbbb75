//! Metadata answers that describe what sessionql does not have: keys (it has
//! no primary or foreign keys, so the answers are empty, not errors, as JDBC
//! drivers expect) and the SQL types it speaks (`GetXdbcTypeInfo`).

use std::sync::Arc;

use arrow_flight::sql::metadata::{XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder};
use arrow_flight::sql::{Nullable, Searchable, XdbcDataType};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

/// Flight SQL's schema of `GetPrimaryKeys` results.
pub fn primary_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("key_name", DataType::Utf8, true),
        Field::new("key_sequence", DataType::Int32, false),
    ]))
}

/// Flight SQL's schema of `GetExportedKeys`, `GetImportedKeys` and
/// `GetCrossReference` results.
pub fn foreign_keys_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("pk_catalog_name", DataType::Utf8, true),
        Field::new("pk_db_schema_name", DataType::Utf8, true),
        Field::new("pk_table_name", DataType::Utf8, false),
        Field::new("pk_column_name", DataType::Utf8, false),
        Field::new("fk_catalog_name", DataType::Utf8, true),
        Field::new("fk_db_schema_name", DataType::Utf8, true),
        Field::new("fk_table_name", DataType::Utf8, false),
        Field::new("fk_column_name", DataType::Utf8, false),
        Field::new("key_sequence", DataType::Int32, false),
        Field::new("fk_key_name", DataType::Utf8, true),
        Field::new("pk_key_name", DataType::Utf8, true),
        Field::new("update_rule", DataType::UInt8, false),
        Field::new("delete_rule", DataType::UInt8, false),
    ]))
}

fn type_info(
    name: &str,
    data_type: XdbcDataType,
    column_size: Option<i32>,
    quoted: bool,
) -> XdbcTypeInfo {
    XdbcTypeInfo {
        type_name: name.to_string(),
        data_type,
        column_size,
        literal_prefix: quoted.then(|| "'".to_string()),
        literal_suffix: quoted.then(|| "'".to_string()),
        create_params: None,
        nullable: Nullable::NullabilityNullable,
        case_sensitive: quoted,
        searchable: Searchable::Full,
        unsigned_attribute: (!quoted).then_some(false),
        fixed_prec_scale: false,
        auto_increment: None,
        local_type_name: Some(name.to_string()),
        minimum_scale: None,
        maximum_scale: None,
        sql_data_type: data_type,
        datetime_subcode: None,
        num_prec_radix: None,
        interval_precision: None,
    }
}

/// The SQL types of sessionql's tables and usual expressions.
pub fn xdbc_type_info() -> Result<XdbcTypeInfoData, arrow_flight::error::FlightError> {
    let mut builder = XdbcTypeInfoDataBuilder::new();
    builder.append(type_info(
        "VARCHAR",
        XdbcDataType::XdbcVarchar,
        Some(i32::MAX),
        true,
    ));
    builder.append(type_info(
        "BIGINT",
        XdbcDataType::XdbcBigint,
        Some(19),
        false,
    ));
    builder.append(type_info(
        "INTEGER",
        XdbcDataType::XdbcInteger,
        Some(10),
        false,
    ));
    builder.append(type_info(
        "DOUBLE",
        XdbcDataType::XdbcDouble,
        Some(15),
        false,
    ));
    builder.append(type_info("BOOLEAN", XdbcDataType::XdbcBit, Some(1), false));
    builder.append(type_info(
        "TIMESTAMP",
        XdbcDataType::XdbcTimestamp,
        Some(32),
        true,
    ));
    builder.append(type_info("DATE", XdbcDataType::XdbcDate, Some(10), true));
    builder.build()
}
